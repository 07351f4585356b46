"""Synapse sign-in for JupyterHub (entry point ``jupyterhub.authenticators: synapse``)."""

from pathlib import Path

from .synapse import SynapseOAuthenticator

#: Add to ``JupyterHub.template_paths``: the sign-in error pages (see ``templates/``).
TEMPLATE_PATH = str(Path(__file__).parent / "templates")

__all__ = ["TEMPLATE_PATH", "SynapseOAuthenticator"]
