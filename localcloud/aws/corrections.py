"""moto errors that differ from AWS's, and what AWS says instead.

The spawner decides what to do from error codes (a bad instance profile is the admin's
problem, a missing instance is gone), so an error that moto words differently from EC2 would
teach it the wrong code. Only the differences met on the hub's path are corrected:

- RunInstances with an instance profile that does not exist: moto answers IAM's
  ``NoSuchEntity`` (404); EC2 answers ``InvalidParameterValue`` (400) "Value (<arn>) for
  parameter iamInstanceProfile.arn is invalid. Invalid IAM Instance Profile ARN" (``name``
  for a profile given by name);
- RunInstances with an unknown instance type (moto's type validation on):
  moto ``InvalidInstanceType.NotFound``; EC2 ``InvalidParameterValue`` "Invalid value '<type>'
  for InstanceType.".
"""

from __future__ import annotations

from .wire import AwsRequest


def correct(request: AwsRequest, status: int, code: str) -> tuple[str, str, int] | None:
    """(code, message, status) AWS would have answered instead of moto's, or None."""
    if request.service != "ec2" or request.action != "RunInstances":
        return None
    params = request.params
    if code == "NoSuchEntity":
        if "IamInstanceProfile.Arn" in params:
            value, what = params["IamInstanceProfile.Arn"], "arn"
        else:
            value, what = params.get("IamInstanceProfile.Name", ""), "name"
        return (
            "InvalidParameterValue",
            f"Value ({value}) for parameter iamInstanceProfile.{what} is invalid. "
            f"Invalid IAM Instance Profile {what.upper() if what == 'arn' else what}",
            400,
        )
    if code == "InvalidInstanceType.NotFound":
        return (
            "InvalidParameterValue",
            f"Invalid value '{params.get('InstanceType', '')}' for InstanceType.",
            400,
        )
    return None
