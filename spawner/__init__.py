"""The EC2 spawner (``spawner.ec2spawner.EC2Spawner``, entry point ``jupyterhub.spawners:
ec2``) and what a start needs: options, launch builders, bootstrap, parameters, naming, the
AWS client and poller, removal, and the SSM tunnel (``spawner.ssm``, which also runs in
processes without JupyterHub: importing this package imports nothing else).
"""
