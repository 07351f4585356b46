"""The spawn form and the one validator of server options (form and REST ``user_options``)."""

from __future__ import annotations

import copy
from html.parser import HTMLParser
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities, parse_communities
from hub_config.communities import Community
from spawner.options import (
    MAX_VALUE_LENGTH,
    OPTION_KEYS,
    OptionsError,
    SpawnOptions,
    capacity_advice,
    equivalent_types,
    options_form,
    options_from_form,
    validate_options,
)

DEMO = load_communities(DEFAULT_COMMUNITIES_PATH)
AD, NF = DEMO.communities
BASE: dict[str, Any] = yaml.safe_load(DEFAULT_COMMUNITIES_PATH.read_text(encoding="utf-8"))


def _parsed(mutate) -> tuple[Community, ...]:
    data = copy.deepcopy(BASE)
    mutate(data)
    return parse_communities(yaml.safe_dump(data), source="test.yaml").communities


def _defaults(community: Community) -> SpawnOptions:
    return SpawnOptions(
        community_id=community.id,
        image_id=community.default_image,
        instance_type=community.default_instance_type,
        disk_gb=community.disk_gb.default,
    )


# --------------------------------------------------------------------------------------------
# A tiny browser: what a form without JavaScript submits
# --------------------------------------------------------------------------------------------


class _Form(HTMLParser):
    """Collects the form's controls: inputs, radios, selects with their options."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.inputs: list[dict[str, str | None]] = []
        self.selects: dict[str, list[tuple[str, bool, str]]] = {}
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._select: str | None = None
        self._option: tuple[str, bool] | None = None
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input":
            self.inputs.append(a)
        elif tag == "select":
            self._select = a["name"]
            self.selects[self._select] = []
        elif tag == "option":
            self._option = (a["value"] or "", "selected" in a)
        elif tag == "script":
            self._in_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)
            return
        self.text.append(data)
        if self._option is not None and self._select is not None:
            value, selected = self._option
            self.selects[self._select].append((value, selected, data))
            self._option = None

    def submission(self, choose: dict[str, str] | None = None) -> dict[str, list[str]]:
        """Form data as the browser sends it (JupyterHub adds ``_xsrf``)."""
        choose = choose or {}
        data: dict[str, list[str]] = {"_xsrf": ["token-of-the-page"]}
        for a in self.inputs:
            name, kind = a.get("name"), a.get("type")
            assert name is not None
            if kind == "radio":
                wanted = choose.get(name)
                if (wanted is None and "checked" in a) or wanted == a.get("value"):
                    data.setdefault(name, []).append(a["value"] or "")
            else:
                data.setdefault(name, []).append(choose.get(name, a.get("value") or ""))
        for name, options in self.selects.items():
            chosen = [v for v, selected, _ in options if selected] or [options[0][0]]
            data.setdefault(name, []).append(choose.get(name, chosen[0]))
        return data

    def selected(self, name: str) -> str:
        [value] = [v for v, selected, _ in self.selects[name] if selected]
        return value

    def input(self, name: str) -> dict[str, str | None]:
        [found] = [a for a in self.inputs if a.get("name") == name and a.get("type") != "radio"]
        return found


def _form(communities, **kwargs) -> _Form:
    parser = _Form()
    parser.feed(options_form(communities, **kwargs))
    parser.close()
    return parser


# --------------------------------------------------------------------------------------------
# Defaults and accepted choices
# --------------------------------------------------------------------------------------------


def test_empty_options_start_the_first_communitys_defaults() -> None:
    assert validate_options({}, [AD]) == _defaults(AD)
    assert validate_options({}, [NF, AD]) == _defaults(NF)


def test_each_present_key_is_used() -> None:
    raw = {"community": "nf-osc", "image": "jupyter", "instance_type": "g4dn.xlarge"}
    options = validate_options({**raw, "disk_gb": 2000}, [AD, NF])
    assert options == SpawnOptions("nf-osc", "jupyter", "g4dn.xlarge", 2000)


def test_missing_keys_default_within_the_chosen_community() -> None:
    assert validate_options({"community": "nf-osc"}, [AD, NF]) == _defaults(NF)
    options = validate_options({"image": "rstudio"}, [AD, NF])
    assert options == SpawnOptions("ad-portal", "rstudio", "t3.large", 50)


def test_disk_bounds_are_inclusive() -> None:
    assert validate_options({"disk_gb": 20}, [AD]).disk_gb == 20
    assert validate_options({"disk_gb": 500}, [AD]).disk_gb == 500


# --------------------------------------------------------------------------------------------
# Refusals: each says what to choose instead
# --------------------------------------------------------------------------------------------


def _refused(raw: Any, communities=(AD,)) -> OptionsError:
    with pytest.raises(OptionsError) as info:
        validate_options(raw, list(communities))
    message = str(info.value)
    assert message and message == info.value.jupyterhub_message
    return info.value


def test_options_error_is_a_value_error() -> None:
    assert issubclass(OptionsError, ValueError)


def test_user_in_no_community() -> None:
    error = _refused({}, communities=())
    assert "not a member of any community" in str(error)


@pytest.mark.parametrize("raw", [None, [], ["community"], "ad-portal", 3])
def test_options_that_are_not_an_object(raw: Any) -> None:
    error = _refused(raw)
    for key in OPTION_KEYS:
        assert key in str(error)


def test_unknown_key_lists_the_options() -> None:
    error = _refused({"image": "jupyter", "gpu": "yes"})
    assert "'gpu'" in str(error)
    assert "community, image, instance_type, disk_gb" in str(error)


def test_unknown_keys_are_summarised() -> None:
    error = _refused({f"k{i}": 1 for i in range(7)})
    assert "'k0'" in str(error) and "and 4 more" in str(error)
    assert "'k5'" not in str(error)


def test_a_long_unknown_key_is_not_echoed() -> None:
    key = "x" * 500
    error = _refused({key: 1})
    assert "xxxxxxxxxx" not in str(error) and "500 characters" in str(error)


def test_unknown_community_lists_only_the_users_communities() -> None:
    error = _refused({"community": "nope"})
    assert "'nope'" in str(error)
    assert "ad-portal (AD Knowledge Portal (demo))" in str(error)
    assert error.key == "community"


def test_a_community_the_user_is_not_in_is_not_revealed() -> None:
    not_member = _refused({"community": "nf-osc"})
    unknown = _refused({"community": "zz-osc"})
    for error in (not_member, unknown):
        assert NF.name not in str(error)
    # The same words whether the community exists or not (only the echo differs).
    assert str(not_member).replace("nf-osc", "X") == str(unknown).replace("zz-osc", "X")


def test_unknown_image_lists_the_communitys_images() -> None:
    error = _refused({"community": "nf-osc", "image": "vscode"}, communities=(AD, NF))
    assert "'vscode'" in str(error) and NF.name in str(error)
    assert "rstudio (RStudio (R, synapser)), jupyter (Jupyter (Python, scipy))" in str(error)
    assert error.key == "image"


def test_instance_type_of_another_community_is_refused() -> None:
    error = _refused({"community": "ad-portal", "instance_type": "g4dn.xlarge"}, (AD, NF))
    assert "t3.large, t3.xlarge, m5.xlarge, m5.2xlarge, r5.2xlarge" in str(error)
    assert error.key == "instance_type"


@pytest.mark.parametrize(
    ("disk", "words"),
    [
        (19, "19 GiB is out of range"),
        (501, "501 GiB is out of range"),
        (-1, "-1 GiB is out of range"),
        pytest.param(10**5000, "a very large number is out of range", id="huge"),
        ("abc", "'abc' is not a whole number"),
        ("", "'' is not a whole number"),
        ("50.5", "'50.5' is not a whole number"),
        (50.0, "'50.0' is not a whole number"),
        (float("nan"), "'nan' is not a whole number"),
        (True, "not true/false"),
        (None, "not null"),
        ([50], "not a list"),
        ({"gb": 50}, "not an object"),
    ],
)
def test_bad_disk_sizes(disk: Any, words: str) -> None:
    error = _refused({"disk_gb": disk})
    assert words in str(error)
    assert "from 20 to 500 for AD Knowledge Portal (demo)" in str(error)
    assert error.key == "disk_gb"


@pytest.mark.parametrize("key", ["community", "image", "instance_type"])
@pytest.mark.parametrize(
    ("value", "words"),
    [(None, "null"), (["jupyter"], "a list"), ({}, "an object"), (1, "a number"), (False, "true")],
)
def test_wrong_types(key: str, value: Any, words: str) -> None:
    error = _refused({key: value})
    assert f"{key!r} must be a string, not {words}" in str(error)
    assert error.key == key


@pytest.mark.parametrize("key", ["community", "image", "instance_type", "disk_gb"])
def test_oversized_strings_are_refused_before_any_echo(key: str) -> None:
    value = "<script>" + "A" * MAX_VALUE_LENGTH
    error = _refused({key: value})
    assert "too long" in str(error)
    assert "script" not in str(error) and "AAAA" not in str(error)


def test_a_refused_value_is_echoed_short_and_escaped() -> None:
    value = "<img src=x onerror=alert(1)>\n\u202e" + "B" * 60
    assert len(value) <= MAX_VALUE_LENGTH
    error = _refused({"image": value})
    message = str(error)
    assert "<" not in message and ">" not in message and "\n" not in message
    assert "\u202e" not in message
    assert "BBBBBBBBBB" not in message  # at most a short prefix
    assert "\\x3cimg src=x onerror=al" in message


# --------------------------------------------------------------------------------------------
# The form
# --------------------------------------------------------------------------------------------


def test_form_of_one_community_preselects_its_defaults() -> None:
    form = _form([AD])
    assert form.input("community") == {"type": "hidden", "name": "community", "value": "ad-portal"}
    assert form.selected("ad-portal.image") == "jupyter"
    assert form.selected("ad-portal.instance_type") == "t3.large"
    disk = form.input("ad-portal.disk_gb")
    assert (disk["type"], disk["min"], disk["max"], disk["step"], disk["value"]) == (
        "number",
        "20",
        "500",
        "1",
        "50",
    )
    assert not form.scripts  # nothing to switch between
    text = " ".join(form.text)
    assert "From 20 to 500 GiB" in text
    assert AD.description in text


def test_form_shows_environments_and_priced_instance_types() -> None:
    form = _form([NF])
    assert form.selects["nf-osc.image"] == [
        ("rstudio", True, "RStudio (R, synapser)"),
        ("jupyter", False, "Jupyter (Python, scipy)"),
    ]
    types = form.selects["nf-osc.instance_type"]
    assert [v for v, _, _ in types] == [t.name for t in NF.instance_types]
    assert [label for _, _, label in types] == [t.label for t in NF.instance_types]
    assert all("vCPU" in label and "GiB" in label and "/h" in label for _, _, label in types)
    assert "1 GPU" in types[-1][2]


def test_form_of_several_communities_checks_the_first() -> None:
    form = _form([AD, NF])
    radios = [a for a in form.inputs if a.get("type") == "radio"]
    assert [(r["value"], "checked" in r) for r in radios] == [
        ("ad-portal", True),
        ("nf-osc", False),
    ]
    assert form.selected("nf-osc.image") == "rstudio"
    assert form.scripts and "addEventListener" in form.scripts[0]


def test_current_options_are_preselected() -> None:
    current = SpawnOptions("nf-osc", "jupyter", "r5.4xlarge", 1234)
    form = _form([AD, NF], current=current)
    radios = {r["value"]: "checked" in r for r in form.inputs if r.get("type") == "radio"}
    assert radios == {"ad-portal": False, "nf-osc": True}
    assert form.selected("nf-osc.image") == "jupyter"
    assert form.selected("nf-osc.instance_type") == "r5.4xlarge"
    assert form.input("nf-osc.disk_gb")["value"] == "1234"
    # The other community keeps its defaults.
    assert form.selected("ad-portal.instance_type") == "t3.large"
    assert validate_options(options_from_form(form.submission()), [AD, NF]) == current


def test_current_options_no_longer_valid_fall_back_to_defaults() -> None:
    stale = SpawnOptions("nf-osc", "retired", "x1.32xlarge", 10)
    form = _form([AD, NF], current=stale)
    assert validate_options(options_from_form(form.submission()), [AD, NF]) == _defaults(NF)
    gone = SpawnOptions("other", "jupyter", "t3.large", 50)
    form = _form([AD, NF], current=gone)
    assert validate_options(options_from_form(form.submission()), [AD, NF]) == _defaults(AD)


def test_form_for_no_community_says_so() -> None:
    assert "not a member of any community" in options_form([])


@pytest.mark.parametrize("community", DEMO.communities, ids=lambda c: c.id)
def test_round_trip_of_the_defaults(community: Community) -> None:
    for communities in ([community], list(DEMO.communities)):
        form = _form(communities)
        choose = {"community": community.id}
        raw = options_from_form(form.submission(choose))
        assert validate_options(raw, communities) == _defaults(community)


@pytest.mark.parametrize("community", DEMO.communities, ids=lambda c: c.id)
def test_round_trip_of_other_choices(community: Community) -> None:
    form = _form(list(DEMO.communities))
    last_image, last_type = community.images[-1].id, community.instance_types[-1].name
    choose = {
        "community": community.id,
        f"{community.id}.image": last_image,
        f"{community.id}.instance_type": last_type,
        f"{community.id}.disk_gb": str(community.disk_gb.max),
    }
    raw = options_from_form(form.submission(choose))
    assert raw == {
        "community": community.id,
        "image": last_image,
        "instance_type": last_type,
        "disk_gb": community.disk_gb.max,
    }
    expected = SpawnOptions(community.id, last_image, last_type, community.disk_gb.max)
    assert validate_options(raw, list(DEMO.communities)) == expected


def test_html_is_escaped() -> None:
    evil = "<script>alert(\"x\")</script> & 'q'"

    def mutate(data: dict[str, Any]) -> None:
        data["communities"][0]["name"] = evil
        data["communities"][0]["description"] = evil
        data["communities"][0]["images"]["choices"]["jupyter"]["display_name"] = evil

    communities = _parsed(mutate)
    assert communities[0].name == evil
    html = options_form(communities)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in html
    form = _form(communities)
    # The parsed text shows the name as written, and the only script is the form's own.
    assert evil in form.text
    assert len(form.scripts) == 1 and "alert" not in form.scripts[0]
    raw = options_from_form(form.submission({"community": "ad-portal"}))
    assert validate_options(raw, communities) == _defaults(communities[0])


# --------------------------------------------------------------------------------------------
# options_from_form
# --------------------------------------------------------------------------------------------


def test_options_from_form_picks_the_chosen_communitys_fields() -> None:
    formdata = {
        "_xsrf": ["abc"],
        "community": ["nf-osc"],
        "ad-portal.image": ["jupyter"],
        "ad-portal.instance_type": ["t3.large"],
        "ad-portal.disk_gb": ["50"],
        "nf-osc.image": ["rstudio"],
        "nf-osc.instance_type": ["r5.xlarge"],
        "nf-osc.disk_gb": [" 300 "],
    }
    assert options_from_form(formdata) == {
        "community": "nf-osc",
        "image": "rstudio",
        "instance_type": "r5.xlarge",
        "disk_gb": 300,
    }


def test_options_from_form_keeps_what_validation_must_refuse() -> None:
    raw = options_from_form(
        {"community": ["ad-portal"], "ad-portal.disk_gb": ["5e1"], "ad-portal.image": ["a", "b"]}
    )
    assert raw == {"community": "ad-portal", "image": ["a", "b"], "disk_gb": "5e1"}
    with pytest.raises(OptionsError):
        validate_options(raw, [AD])
    assert options_from_form({"community": ["a", "b"]}) == {"community": ["a", "b"]}
    assert options_from_form({"ad-portal.disk_gb": ["٣٠"]})["disk_gb"] == "٣٠"


def test_options_from_form_without_a_community_field_uses_the_first_sent() -> None:
    raw = options_from_form({"nf-osc.image": ["jupyter"], "ad-portal.image": ["rstudio"]})
    assert raw == {"community": "nf-osc", "image": "jupyter"}
    assert options_from_form({}) == {}
    assert options_from_form({"_xsrf": ["x"]}) == {}


def test_options_from_query_style_plain_keys() -> None:
    # /hub/spawn?community=nf-osc&image=jupyter&disk_gb=80 (options_from_query calls us)
    raw = options_from_form({"community": ["nf-osc"], "image": ["jupyter"], "disk_gb": ["80"]})
    assert raw == {"community": "nf-osc", "image": "jupyter", "disk_gb": 80}
    assert validate_options(raw, [AD, NF]) == SpawnOptions("nf-osc", "jupyter", "m5.xlarge", 80)


# --------------------------------------------------------------------------------------------
# Anything at all through the REST API
# --------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=120),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)
_likely = st.sampled_from(
    ["ad-portal", "nf-osc", "jupyter", "rstudio", "t3.large", "g4dn.xlarge", "m5.large"]
)
_value = _json | _likely | st.integers(min_value=0, max_value=3000)
_user_options = st.dictionaries(st.sampled_from([*OPTION_KEYS, "extra"]), _value, max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_user_options | _json, member_of=st.sampled_from([(AD,), (NF,), (AD, NF), (NF, AD)]))
def test_any_json_is_accepted_within_choices_or_refused_with_options_error(
    raw: Any, member_of: tuple[Community, ...]
) -> None:
    try:
        options = validate_options(raw, list(member_of))
    except OptionsError as error:
        assert str(error)
        assert len(str(error)) < 600
        return
    community = next(c for c in member_of if c.id == options.community_id)
    assert community.image(options.image_id) is not None
    assert community.instance_type(options.instance_type) is not None
    assert type(options.disk_gb) is int and options.disk_gb in community.disk_gb
    assert isinstance(raw, dict) and set(raw) <= set(OPTION_KEYS)


def test_saved_options_come_back_typed_or_not_at_all() -> None:
    """The spawner saves ``as_user_options()`` in its state and reads it back with
    ``from_saved``: the same options, or None for a state that is not whole."""
    chosen = SpawnOptions("ad-portal", "jupyter", "t3.large", 20)
    assert SpawnOptions.from_saved(chosen.as_user_options()) == chosen
    for broken in (
        None,
        [],
        {"community": "ad-portal", "image": "jupyter"},
        {**chosen.as_user_options(), "disk_gb": "20"},
        {**chosen.as_user_options(), "disk_gb": True},
        {**chosen.as_user_options(), "image": ""},
    ):
        assert SpawnOptions.from_saved(broken) is None, broken


def test_equivalent_types_are_as_large_of_the_same_architecture_cheapest_first() -> None:
    """What a user is offered when AWS has no capacity for their type (``capacity_advice``):
    the community's other types with at least the vCPUs, memory and GPUs, on the same CPU
    architecture (the community's AMI must boot on it), by price in its region."""
    ad = AD
    names = [t.name for t in equivalent_types(ad, "t3.large")]
    assert names == ["t3.xlarge", "m5.xlarge", "m5.2xlarge", "r5.2xlarge"]
    assert [t.name for t in equivalent_types(ad, "r5.2xlarge")] == []
    assert equivalent_types(ad, "x9.huge") == []
    advice = capacity_advice(ad, "r5.2xlarge", "us-east-1a")
    assert "No other type of AD Knowledge Portal (demo) is as large" in advice
    assert "t3.xlarge (4 vCPU, 16 GiB, ~$0.166/h)" in capacity_advice(ad, "t3.large", "z")
