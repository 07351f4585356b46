"""Infrastructure as code: CloudFormation templates, IAM policies, and the code tests use to
read them (`sources`) and to evaluate the policies (`policy_eval`)."""
