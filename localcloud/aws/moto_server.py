"""moto 5 in server mode, in a thread of this process, and what it does for this hub.

The local cloud keeps every AWS resource (instances, volumes, parameters, roles) in one moto
server, reached over HTTP like AWS, so the hub's boto3 code runs unchanged. What moto 5.2
does, found by running it (``tests/localcloud/test_aws.py`` pins the parts we rely on):

Instance states
  There are no transitions: RunInstances *answers* ``pending`` but the instance is
  ``running`` at the next DescribeInstances; StopInstances answers ``stopping`` and it is
  ``stopped`` at once; StartInstances answers ``pending``, then ``running``; TerminateInstances
  answers ``shutting-down``, then ``terminated`` (and the instance stays listed). moto's state
  manager (``moto_api``) has no EC2 model, so there is no setting for delays. LaunchTime is not
  updated by StartInstances. The instance simulator therefore adds the only delay that
  matters to the hub, the boot (notebook up, agent online), itself.
``ClientToken``
  Stored but not honoured: a second RunInstances with the same token launches a second
  instance. The front implements AWS's idempotency (``idempotency``).
Tags and block devices
  ``TagSpecifications`` of ``ResourceType=volume`` tag every volume created by the launch.
  ``BlockDeviceMappings`` create one volume per mapping (size, type, ``Encrypted``,
  ``DeleteOnTermination`` kept) and DescribeInstances lists them under the requested device
  names (``/dev/sdf`` stays ``/dev/sdf``). With mappings given, moto adds no default root
  volume. Stop keeps the volumes attached; terminate detaches them all and deletes those with
  ``DeleteOnTermination`` (DescribeVolumes then answers ``InvalidVolume.NotFound``), so after
  termination DescribeInstances shows no block devices any more.
User data
  ``DescribeInstanceAttribute(Attribute="userData")`` returns the base64 text sent with
  RunInstances.
Instance profiles
  ``IamInstanceProfile={"Arn": ...}`` must name an existing profile; if not, moto answers
  IAM's ``NoSuchEntity`` with HTTP 404, where EC2 answers ``InvalidParameterValue`` (400):
  the front rewrites it (``corrections``). The association appears in DescribeInstances as
  ``IamInstanceProfile: {Arn, Id}``. Profile and role must be created in IAM first.
AMIs
  moto ships about 1300 AMIs of 2017-2026 (ids of 8 and 17 hex digits; e.g. Amazon Linux 2023
  ``al2023-ami-2023.*-kernel-6.1-x86_64``, root ``/dev/xvda``). By default RunInstances accepts
  *any* ImageId; with ``ENABLE_AMI_VALIDATION`` an unknown one is ``InvalidAMIID.NotFound``
  (400), as on AWS. ``start_moto`` turns that validation on.
Instance types
  Accepted whatever they are unless ``EC2_ENABLE_INSTANCE_TYPE_VALIDATION``; then an unknown
  type is ``InvalidInstanceType.NotFound``, where AWS says ``InvalidParameterValue`` ("Invalid
  value 'x' for InstanceType."): ``start_moto`` turns the validation on and the front
  rewrites the code.
Subnets and security groups
  Validated: ``InvalidSubnetID.NotFound`` and ``InvalidGroup.NotFound`` (400). A new security
  group has no inbound rule and the default egress rule (all traffic to 0.0.0.0/0).
STS and IAM
  ``AssumeRole`` of any existing role returns well-formed temporary credentials (``ASIA...``
  key, secret, session token, one hour); moto does not check the trust policy, and requests
  signed with those credentials are accepted (caller identity: ``assumed-role/<role>/<session
  name>``). IAM policies are not enforced: any credentials may do anything. SigV4 signatures
  are not checked.
SSM Parameter Store
  Put/Get/Delete, ``SecureString`` (``WithDecryption`` returns the value), tags on
  parameters; a missing parameter is ``ParameterNotFound`` (400). Session Manager operations
  do not exist in moto: the SSM stand-in answers those.
Dispatch
  In server mode one port serves every service: moto picks the service from the SigV4
  credential scope in ``Authorization`` (``.../us-east-1/ec2/aws4_request``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import urllib.request
from dataclasses import dataclass, field
from typing import Any

#: moto settings this module switches on while a server runs (restored by ``stop``).
VALIDATIONS = ("ENABLE_AMI_VALIDATION", "EC2_ENABLE_INSTANCE_TYPE_VALIDATION")


@dataclass
class MotoServer:
    """A running moto server: its URL, and ``stop()``."""

    url: str
    _server: Any
    _saved: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop serving and put back the moto settings ``start_moto`` changed. moto keeps its
        state in the process: it is reset too, so that a local cloud started after this one
        in the same process begins as a new account (no access keys, instances or
        parameters of this one's)."""
        from moto import settings

        with contextlib.suppress(Exception):
            urllib.request.urlopen(
                urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=30
            ).close()
        with contextlib.suppress(Exception):
            self._server.stop()
        for name, value in self._saved.items():
            setattr(settings, name, value)
        self._saved.clear()


def index_moto_tags() -> None:
    """Make moto read an EC2 resource's tags from its tag table instead of scanning it.

    moto 5's ``TaggedEC2Resource.get_tags`` runs ``describe_tags`` over every tag of every
    resource for each resource it lists, so one DescribeInstances of N tagged instances (and
    their volumes) costs O(N^2): with 500 instances a page of 100 takes seconds of the local
    cloud's CPU, where EC2 answers in well under one. The answer is the same list of
    ``{"resource_id", "key", "value", "resource_type"}`` (resource ids are exact: moto's
    ``resource-id`` filter is a prefix match, and EC2 ids of one kind have one length).
    """
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def get_tags(self: Any) -> list[dict[str, str]]:
        resource_id = self.id
        if not resource_id:
            return []
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
        tags = self.ec2_backend.tags.get(resource_id, {})
        return [
            {"resource_id": resource_id, "key": key, "value": value, "resource_type": kind}
            for key, value in tags.items()
        ]

    TaggedEC2Resource.get_tags = get_tags  # type: ignore[method-assign]


def _snapshot(view: Any, attempts: int = 20) -> list[Any]:
    """A list of a moto table's view: moto serves requests in threads, and another request
    may add to the table while it is copied ("changed size during iteration"): copy again."""
    for _ in range(attempts - 1):
        try:
            return list(view())
        except RuntimeError:
            continue
    return list(view())


def index_moto_instances() -> None:
    """Make moto find instances by id, and by ``instance-id`` and tag filters, without copying
    and filtering every reservation.

    moto 5's ``get_instance`` walks ``all_instances()``, which copies every reservation, and a
    filtered DescribeInstances copies and filters them all: with thousands of instances each
    is milliseconds of the local cloud's CPU, and every start makes several (RunInstances'
    checks, the simulator's DescribeInstanceAttribute, the hub's describes of the instances
    it waits for): O(N^2) over a 5,000-server run, where EC2 answers in constant time. The
    answers are the same: the reservations are first narrowed to those holding an instance
    that every such filter could match (exact values only; a value with a wildcard narrows
    nothing), and moto's own filtering then runs on those.
    """
    from moto.ec2.exceptions import InvalidInstanceIdError
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.utils import filter_reservations

    if getattr(InstanceBackend, "_snh_indexed", False):
        return
    everything = InstanceBackend.all_reservations

    def get_instance(self: Any, instance_id: str) -> Any:
        for reservation in _snapshot(self.reservations.values):
            for instance in reservation.instances:
                if instance.id == instance_id:
                    return instance
        raise InvalidInstanceIdError(instance_id)

    def candidates(self: Any, filters: Any) -> set[str] | None:
        """Instance ids every match is among, or None (no narrowing: moto answers alone).
        Only the filters the hub sends narrow, and only when every filter is of those kinds
        (so moto still refuses a filter it does not know) and given as a list of exact
        values (moto reads a string as its characters)."""
        filters = filters or {}
        if not all(name == "instance-id" or name.startswith("tag:") for name in filters):
            return None
        found: set[str] | None = None
        for name, values in filters.items():
            if isinstance(values, str) or any(c in v for v in values for c in "*?["):
                continue
            values = list(values)
            if name == "instance-id":
                ids = set(values)
            elif name.startswith("tag:"):
                key = name[4:]
                ids = {
                    rid
                    for rid, tags in _snapshot(self.tags.items)
                    if rid.startswith("i-") and tags.get(key) in values
                }
            else:
                continue
            found = ids if found is None else found & ids
        return found

    def all_reservations(self: Any, filters: Any = None) -> list[Any]:
        wanted = candidates(self, filters)
        if wanted is None:
            return everything(self, filters)
        reservations = [
            copy.copy(r)
            for r in _snapshot(self.reservations.values)
            if any(i.id in wanted for i in r.instances)
        ]
        return filter_reservations(reservations, filters)

    InstanceBackend.get_instance = get_instance  # type: ignore[method-assign]
    InstanceBackend.all_reservations = all_reservations  # type: ignore[method-assign]
    InstanceBackend._snh_indexed = True  # type: ignore[attr-defined]


def start_moto(port: int = 0, host: str = "127.0.0.1", *, validate: bool = True) -> MotoServer:
    """Start moto's threaded server (``port=0``: a free port) and return it once it listens.

    ``validate`` turns on moto's AMI and instance-type validation, so a community file naming
    an AMI or type that does not exist fails as it would on AWS. These are process-wide moto
    settings (read when a request is served), so they are restored by ``stop``.
    """
    from moto import settings
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    saved: dict[str, Any] = {}
    if validate:
        for name in VALIDATIONS:
            saved[name] = getattr(settings, name)
            setattr(settings, name, True)
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    return MotoServer(url=f"http://{url_host}:{bound_port}", _server=server, _saved=saved)
