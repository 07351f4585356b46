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

And what AWS refuses that moto answers (``refusal``):

- an EC2 describe with more than 200 filter values in all (EC2's error codes:
  ``FilterLimitExceeded``, "The request uses too many filters or too many filter values"; the
  hub's poller asks for the instances spawns wait on in calls of at most 200).
"""

from __future__ import annotations

from .wire import AwsRequest

#: Filter values EC2 accepts in one describe call.
EC2_FILTER_VALUES = 200


def refusal(request: AwsRequest) -> tuple[str, str, int] | None:
    """(code, message, status) of AWS's refusal of a request moto would answer, or None."""
    if request.service != "ec2" or not request.action.startswith("Describe"):
        return None
    values = sum(1 for name in request.params if name.startswith("Filter.") and ".Value." in name)
    if values > EC2_FILTER_VALUES:
        return (
            "FilterLimitExceeded",
            f"The maximum number of filter values specified on a single call is "
            f"{EC2_FILTER_VALUES}",
            400,
        )
    return None


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
