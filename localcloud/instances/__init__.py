"""The instance simulator (``simulator.py``) and its pieces: what runs "on" an instance.

- ``userdata``: ``server.conf`` out of the ``#cloud-config`` user data;
- ``notebook``: the notebook "container" as a local ``jupyterhub-singleuser`` process;
- ``light``: the one shared responder standing in for every light instance's notebook;
- ``rstudio_page``: the jupyter-server extension standing in for RStudio Server (with RStudio's
  event long-poll, for the idle-culling rules);
- ``backstop``: the instance's idle backstop (``notebook-bootstrap backstop`` on AWS);
- ``die_with_parent``: exec wrapper so no notebook outlives the local cloud;
- ``activity``: the simulator's one-line-per-action log (``.localcloud/instances.log``);
- ``control``: the simulator's ``/_control/`` routes (served by the AWS front).
"""
