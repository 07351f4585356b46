"""Synapse sign-in for JupyterHub (entry point ``jupyterhub.authenticators: synapse``)."""

from .synapse import SynapseOAuthenticator

__all__ = ["SynapseOAuthenticator"]
