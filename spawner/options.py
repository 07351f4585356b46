"""The spawn form and the one validator of a server's options.

A server's options reach the hub two ways: the HTML form (``options_form`` →
``options_from_form``) and the REST API's ``user_options``, which anyone with a token can fill
with arbitrary JSON. Both go through :func:`validate_options`, so there is exactly one place
that decides what a user may ask for, and it decides only from the communities the user
belongs to. Everything here is pure (no hub, no AWS), like kubespawner's ``objects.py``.

Form fields are named per community (``<community>.image``, ``<community>.instance_type``,
``<community>.disk_gb``) next to one ``community`` field: without JavaScript every community's
fields are submitted and the chosen ``community`` says which set applies; with JavaScript the
other communities' fields are hidden and disabled. Community ids are slugs (no ``.``), so the
names cannot collide.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hub_config.communities import Community

#: The keys of ``user_options``. Nothing else is accepted, from the form or the REST API.
OPTION_KEYS = ("community", "image", "instance_type", "disk_gb")
#: The per-community form fields (``<community id>.<key>``).
COMMUNITY_FIELD_KEYS = ("image", "instance_type", "disk_gb")
#: Longer strings are refused before anything of them is echoed back or compared.
MAX_VALUE_LENGTH = 100
#: How much of a refused value an error message quotes back.
_ECHO_LENGTH = 24
#: Disk sizes are echoed only when they are plausible numbers (``str`` of a huge int raises).
_ECHO_INT_LIMIT = 10**12
_DIGITS_RE = re.compile(r"\s*[0-9]{1,9}\s*")


@dataclass(frozen=True)
class SpawnOptions:
    """A server's validated choices; only :func:`validate_options` (and `from_saved`, for
    choices validated at an earlier start) should build one."""

    community_id: str
    image_id: str
    instance_type: str
    disk_gb: int

    def as_user_options(self) -> dict[str, Any]:
        """The choices as ``user_options`` (and the spawner's saved state) spell them."""
        return {
            "community": self.community_id,
            "image": self.image_id,
            "instance_type": self.instance_type,
            "disk_gb": self.disk_gb,
        }

    @classmethod
    def from_saved(cls, saved: Any) -> SpawnOptions | None:
        """The choices of an earlier start, from the spawner's saved state; None when there
        are none or they are not whole (a state written by another version). They are
        typed, not re-validated: the communities may have changed since, and a new start
        validates its options again."""
        if not isinstance(saved, Mapping):
            return None
        community, image = saved.get("community"), saved.get("image")
        instance_type, disk_gb = saved.get("instance_type"), saved.get("disk_gb")
        if not all(isinstance(v, str) and v for v in (community, image, instance_type)):
            return None
        if not isinstance(disk_gb, int) or isinstance(disk_gb, bool):
            return None
        return cls(community, image, instance_type, disk_gb)


class OptionsError(ValueError):
    """A choice the user may not make; the message says what to choose instead.

    JupyterHub shows ``str(exc)`` on the spawn page (and ``jupyterhub_message`` where it looks
    for one), so the message is written for the person who filled the form.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The option the problem is about (one of :data:`OPTION_KEYS`), if one.
        self.key = key

    @property
    def jupyterhub_message(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate_options(raw: Mapping[str, Any], communities: Sequence[Community]) -> SpawnOptions:
    """Turn form or REST ``user_options`` into options the user may have, or refuse them.

    ``communities`` are the ones the user belongs to, in form order. A missing key takes its
    default: the first community (whatever the number of communities, so an empty
    ``user_options`` always starts a server, as one click on Start does), then that community's
    default image, instance type and disk size. A present key must hold a valid value: ``null``
    is refused, not defaulted. Names of communities the user is not in are never mentioned.
    """
    if not communities:
        raise OptionsError(
            "You are not a member of any community that can start servers on this hub. "
            "Ask to join a community's Synapse team, then sign out and in again."
        )
    if not isinstance(raw, Mapping):
        raise OptionsError(
            f"Server options must be an object with the keys {_join(OPTION_KEYS)}, "
            f"not {_describe(raw)}."
        )
    unknown = [key for key in raw if key not in OPTION_KEYS]
    if unknown:
        shown = ", ".join(_echo_key(key) for key in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise OptionsError(
            f"Unknown server option {shown}{more}. The options are: {_join(OPTION_KEYS)}."
        )

    community = _community(raw, communities)
    image_id = _text(raw, "image")
    if image_id is None:
        image_id = community.default_image
    elif community.image(image_id) is None:
        choices = ", ".join(f"{i.id} ({i.display_name})" for i in community.images)
        raise OptionsError(
            f"Unknown environment {_echo(image_id)} for {community.name}. "
            f"Choose one of: {choices}.",
            key="image",
        )
    type_name = _text(raw, "instance_type")
    if type_name is None:
        type_name = community.default_instance_type
    elif community.instance_type(type_name) is None:
        choices = ", ".join(t.name for t in community.instance_types)
        raise OptionsError(
            f"Instance type {_echo(type_name)} is not offered to {community.name}. "
            f"Choose one of: {choices}.",
            key="instance_type",
        )
    return SpawnOptions(
        community_id=community.id,
        image_id=image_id,
        instance_type=type_name,
        disk_gb=_disk(raw, community),
    )


def _community(raw: Mapping[str, Any], communities: Sequence[Community]) -> Community:
    wanted = _text(raw, "community")
    if wanted is None:
        return communities[0]
    found = next((c for c in communities if c.id == wanted), None)
    if found is None:
        # Same words whether the community exists or not: membership is not for others to probe.
        choices = ", ".join(f"{c.id} ({c.name})" for c in communities)
        raise OptionsError(
            f"Unknown community {_echo(wanted)}. You can start servers in: {choices}.",
            key="community",
        )
    return found


def _text(raw: Mapping[str, Any], key: str) -> str | None:
    """A present option must be a short string; None means the key is absent."""
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, str):
        raise OptionsError(f"The option {key!r} must be a string, not {_describe(value)}.", key=key)
    if len(value) > MAX_VALUE_LENGTH:
        raise OptionsError(
            f"The option {key!r} is too long ({len(value)} characters; "
            f"at most {MAX_VALUE_LENGTH}).",
            key=key,
        )
    return value


def _disk(raw: Mapping[str, Any], community: Community) -> int:
    bounds = community.disk_gb
    where = f"Choose a whole number of GiB from {bounds.min} to {bounds.max} for {community.name}."
    if "disk_gb" not in raw:
        return bounds.default
    value = raw["disk_gb"]
    if isinstance(value, str):
        if len(value) > MAX_VALUE_LENGTH:
            raise OptionsError(
                f"The disk size is too long ({len(value)} characters). {where}", key="disk_gb"
            )
        raise OptionsError(
            f"Disk size {_echo(value)} is not a whole number. {where}", key="disk_gb"
        )
    if isinstance(value, float):
        raise OptionsError(
            f"Disk size {_echo(repr(value))} is not a whole number. {where}", key="disk_gb"
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError(
            f"The disk size must be a whole number, not {_describe(value)}. {where}",
            key="disk_gb",
        )
    if value not in bounds:
        shown = f"{value} GiB" if abs(value) < _ECHO_INT_LIMIT else "a very large number"
        raise OptionsError(f"Disk size {shown} is out of range. {where}", key="disk_gb")
    return value


def _echo(value: str) -> str:
    """A short prefix of a refused value, safe in HTML, JSON and logs without more escaping."""
    prefix = value[:_ECHO_LENGTH]
    shown = ascii(prefix).replace("<", "\\x3c").replace(">", "\\x3e").replace("&", "\\x26")
    return shown + ("..." if len(value) > _ECHO_LENGTH else "")


def _echo_key(key: object) -> str:
    if not isinstance(key, str):
        return _describe(key)
    if len(key) > MAX_VALUE_LENGTH:
        return f"(a name of {len(key)} characters)"
    return _echo(key)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return "a value of another type"


def _join(keys: Sequence[str]) -> str:
    return ", ".join(keys)


# --------------------------------------------------------------------------------------------
# The form
# --------------------------------------------------------------------------------------------


def equivalent_types(community: Community, instance_type: str) -> list[Any]:
    """The community's other instance types a server on ``instance_type`` can move to when
    AWS has no capacity for it: the same architecture (the AMI must boot), at least the same
    vCPUs, memory and GPUs, cheapest first (in the community's region)."""
    current = community.instance_type(instance_type)
    if current is None:
        return []
    return sorted(
        (
            t
            for t in community.instance_types
            if t.name != current.name
            and t.arch == current.arch
            and t.vcpu >= current.vcpu
            and t.memory_gib >= current.memory_gib
            and t.gpus >= current.gpus
        ),
        key=lambda t: (t.price_in(community.region), t.name),
    )


def capacity_advice(community: Community, instance_type: str, where: str) -> str:
    """What a user is told when AWS has no ``instance_type`` capacity ``where``: the
    equivalents with their prices, or to try later."""
    options = equivalent_types(community, instance_type)
    said = f"AWS has no {instance_type} capacity right now in {where}."
    if not options:
        return f"{said} No other type of {community.name} is as large; try again in a few minutes."
    listed = ", ".join(
        f"{t.name} ({t.vcpu} vCPU, {t.memory_gib:g} GiB, ~${t.price_in(community.region):.3f}/h)"
        for t in options
    )
    return (
        f"{said} These types of {community.name} are at least as large: {listed}. Pick one "
        "in the form and start again (your files stay), or try again in a few minutes."
    )


def field_name(community_id: str, key: str) -> str:
    """The form field of ``key`` (one of :data:`COMMUNITY_FIELD_KEYS`) for one community."""
    return f"{community_id}.{key}"


def options_from_form(formdata: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The raw ``user_options`` of a submitted form, for :func:`validate_options` to judge.

    Values stay as submitted (a field sent twice stays a list, which validation refuses),
    except a disk size of plain digits, which becomes an int. Fields the form does not have
    (JupyterHub's ``_xsrf``, files) are ignored. Without a ``community`` field, the first
    community whose fields were sent applies; plain ``image``/``instance_type``/``disk_gb``
    fields are used when the community's own are absent, so that a link such as
    ``/hub/spawn?community=nf-osc&image=rstudio`` (``options_from_query``) works too. A key
    with no field at all is left out, and validation then applies its default.
    """

    def one(name: str) -> Any:
        values = formdata.get(name)
        if values is None:
            return None
        if isinstance(values, str):  # a caller that already flattened the lists
            return values
        values = list(values)
        return values[0] if len(values) == 1 else values

    raw: dict[str, Any] = {}
    community = one("community")
    if community is None:
        community = next(
            (
                prefix
                for name in formdata
                for prefix, dot, key in [name.partition(".")]
                if dot and key in COMMUNITY_FIELD_KEYS
            ),
            None,
        )
    if community is not None:
        raw["community"] = community
    for key in COMMUNITY_FIELD_KEYS:
        value = one(field_name(community, key)) if isinstance(community, str) else None
        if value is None:
            value = one(key)
        if value is None:
            continue
        if key == "disk_gb" and isinstance(value, str) and _DIGITS_RE.fullmatch(value):
            value = int(value)
        raw[key] = value
    return raw


_FORM_SCRIPT = """\
<script>
(function () {
  var root = document.getElementById("snh-spawn-options");
  if (!root) { return; }
  var radios = root.querySelectorAll('input[type="radio"][name="community"]');
  var sets = root.querySelectorAll("fieldset[data-snh-community]");
  function show() {
    var chosen = root.querySelector('input[type="radio"][name="community"]:checked');
    for (var i = 0; i < sets.length; i++) {
      var on = !chosen || sets[i].getAttribute("data-snh-community") === chosen.value;
      sets[i].hidden = !on;
      sets[i].disabled = !on;
    }
  }
  for (var i = 0; i < radios.length; i++) { radios[i].addEventListener("change", show); }
  show();
})();
</script>"""


def options_form(communities: Sequence[Community], *, current: SpawnOptions | None = None) -> str:
    """The inner HTML of the spawn form (JupyterHub adds the ``<form>`` and the Start button).

    Every field has a valid value preselected, so Start alone starts a server: the defaults of
    the communities file, or ``current`` (the server's last options) where they are still
    valid, so a restart offers the same choices. Works without JavaScript; a small inline
    script only hides (and disables, so they are neither submitted nor validated by the
    browser) the fields of the communities not chosen.
    """
    if not communities:
        return (
            '<div id="snh-spawn-options"><p class="alert alert-warning">'
            "You are not a member of any community that can start servers on this hub.</p></div>"
        )
    chosen = communities[0]
    if current is not None:
        chosen = next((c for c in communities if c.id == current.community_id), chosen)
    parts = ['<div id="snh-spawn-options" class="snh-spawn-options">']
    if len(communities) == 1:
        parts.append(
            f'<input type="hidden" name="community" value="{_e(chosen.id)}">'
            f'<h3 class="snh-community-name">{_e(chosen.name)}</h3>'
        )
        if chosen.description:
            parts.append(f'<p class="form-text">{_e(chosen.description)}</p>')
    else:
        parts.append('<fieldset class="mb-3"><legend>Community</legend>')
        for community in communities:
            cid = _e(community.id)
            checked = " checked" if community is chosen else ""
            parts.append(
                '<div class="form-check">'
                f'<input class="form-check-input" type="radio" name="community" '
                f'id="snh-community-{cid}" value="{cid}"{checked}>'
                f'<label class="form-check-label" for="snh-community-{cid}">'
                f"{_e(community.name)}</label>"
            )
            if community.description:
                parts.append(f'<div class="form-text">{_e(community.description)}</div>')
            parts.append("</div>")
        parts.append("</fieldset>")
    for community in communities:
        parts.append(_community_fields(community, current if community is chosen else None))
    parts.append("</div>")
    if len(communities) > 1:
        parts.append(_FORM_SCRIPT)
    return "\n".join(parts)


def _community_fields(community: Community, current: SpawnOptions | None) -> str:
    cid = _e(community.id)
    image = community.default_image
    type_name = community.default_instance_type
    disk = community.disk_gb.default
    if current is not None:
        if community.image(current.image_id) is not None:
            image = current.image_id
        if community.instance_type(current.instance_type) is not None:
            type_name = current.instance_type
        if current.disk_gb in community.disk_gb:
            disk = current.disk_gb
    bounds = community.disk_gb
    images = "".join(
        _option(i.id, i.display_name, selected=i.id == image) for i in community.images
    )
    types = "".join(
        _option(t.name, t.label, selected=t.name == type_name) for t in community.instance_types
    )
    return (
        f'<fieldset class="mb-3 snh-community" data-snh-community="{cid}">'
        f"<legend>Server for {_e(community.name)}</legend>"
        f'<div class="mb-2"><label class="form-label" for="snh-{cid}-image">Environment</label>'
        f'<select class="form-select" id="snh-{cid}-image" '
        f'name="{_e(field_name(community.id, "image"))}">{images}</select></div>'
        f'<div class="mb-2">'
        f'<label class="form-label" for="snh-{cid}-instance_type">Instance type</label>'
        f'<select class="form-select" id="snh-{cid}-instance_type" '
        f'name="{_e(field_name(community.id, "instance_type"))}" '
        f'aria-describedby="snh-{cid}-instance_type-help">{types}</select>'
        f'<div class="form-text" id="snh-{cid}-instance_type-help">Prices are estimates of the '
        f"on-demand price per hour in {_e(community.region)}; a stopped server costs only its "
        f"disk.</div></div>"
        f'<div class="mb-2">'
        f'<label class="form-label" for="snh-{cid}-disk_gb">Home disk size (GiB)</label>'
        f'<input class="form-control" type="number" id="snh-{cid}-disk_gb" '
        f'name="{_e(field_name(community.id, "disk_gb"))}" min="{bounds.min}" '
        f'max="{bounds.max}" step="1" value="{disk}" required '
        f'aria-describedby="snh-{cid}-disk_gb-help">'
        f'<div class="form-text" id="snh-{cid}-disk_gb-help">From {bounds.min} to '
        f"{bounds.max} GiB. Your files live on this disk; it is kept when the server "
        f"stops.</div></div>"
        "</fieldset>"
    )


def _option(value: str, label: str, *, selected: bool) -> str:
    mark = " selected" if selected else ""
    return f'<option value="{_e(value)}"{mark}>{_e(label)}</option>'


def _e(text: str) -> str:
    return html.escape(text, quote=True)
