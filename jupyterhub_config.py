"""The one JupyterHub configuration, for the demo and for real deployments alike.

Deployment-specific values come from environment variables (see ``hub_config/settings.py``
and the README); what each community gets comes from the communities file. Anything wrong in
either stops the hub here, with a message naming the variable or the file, community and key.
"""

import sys
from pathlib import Path

from authenticator import TEMPLATE_PATH
from hub_config import CommunitiesError, load_communities
from hub_config.settings import HubSettings, SettingsError
from spawner import server_api
from spawner.region import Regions

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

HERE = Path(__file__).resolve().parent

try:
    settings = HubSettings.from_environ()
    communities = load_communities(settings.communities_file)
except (SettingsError, CommunitiesError) as e:
    sys.exit(f"jupyterhub_config.py: {e}")

settings.state_dir.mkdir(parents=True, exist_ok=True)

# -- hub and proxy -----------------------------------------------------------------------
c.JupyterHub.bind_url = settings.bind_url
# Behind the load balancer the hub sees "X-Forwarded-Proto: https,http" (configurable-http-
# proxy appends its own hop) and tornado takes the last value, so the request alone would say
# HTTP and cookies would go out without Secure. The public URL says what users see: the hub's
# cookies are Secure (and HttpOnly) when it is https, the notebooks' own cookies too (they get
# it as JUPYTERHUB_PUBLIC_URL), and browsers are told to use HTTPS only (HSTS).
c.JupyterHub.public_url = settings.public_url + "/"
if settings.public_url.startswith("https://"):
    c.JupyterHub.tornado_settings = {
        "headers": {"Strict-Transport-Security": "max-age=31536000; includeSubDomains"}
    }
c.JupyterHub.db_url = settings.db_url
c.JupyterHub.cookie_secret_file = str(settings.state_dir / "jupyterhub_cookie_secret")
# After sign-in, land on the home page (servers, Start button) instead of spawning at once.
c.JupyterHub.redirect_to_server = False
c.JupyterHub.pid_file = str(settings.state_dir / "jupyterhub.pid")
c.ConfigurableHTTPProxy.pid_file = str(settings.state_dir / "jupyterhub-proxy.pid")
local_proxy = HERE / "node_modules" / ".bin" / "configurable-http-proxy"
if local_proxy.exists():
    c.ConfigurableHTTPProxy.command = [str(local_proxy)]

# -- sign-in with Synapse ----------------------------------------------------------------
c.JupyterHub.authenticator_class = "synapse"
c.JupyterHub.template_paths = [TEMPLATE_PATH]
c.SynapseOAuthenticator.client_id = settings.client_id
c.SynapseOAuthenticator.client_secret = settings.client_secret
c.SynapseOAuthenticator.oauth_callback_url = settings.oauth_callback_url
c.SynapseOAuthenticator.issuer = settings.issuer
c.SynapseOAuthenticator.signin_url = settings.signin_url
c.SynapseOAuthenticator.allowed_teams = {
    community.team_id: community.name for community in communities.communities
}
c.SynapseOAuthenticator.admin_teams = {team.team_id: team.name for team in communities.admin_teams}
c.SynapseOAuthenticator.team_groups = {
    **{team.team_id: "admins" for team in communities.admin_teams},
    **{community.team_id: community.id for community in communities.communities},
}
c.SynapseOAuthenticator.admin_contact = settings.admin_contact
# Members of an admin team operate the hub; they never read or use another person's
# credentials. Their "admins" group (team_groups above) holds the community-operator role:
# see every user and server, start, stop and delete servers, read metrics and the admin
# pages — and no admin:auth_state (Synapse tokens), no tokens for other users, no
# access:servers (opening another person's notebook, where that person's token works).
c.JupyterHub.load_roles.append(
    {
        "name": "community-operator",
        "description": "Operate every server without access to anyone's credentials",
        "scopes": [
            "admin-ui",
            "list:users",
            "read:users",
            "servers",
            "read:metrics",
            "list:groups",
            "read:groups",
        ],
        "groups": ["admins"],
    }
)
# Full JupyterHub admin only for the deployment's own operators (break-glass), by name. The
# admin role is declared with exactly them: JupyterHub then takes admin from everyone else
# at start-up (a name removed from the list, a user made admin by an older configuration).
c.SynapseOAuthenticator.break_glass_admins = set(settings.break_glass_admins)
c.JupyterHub.load_roles.append({"name": "admin", "users": sorted(settings.break_glass_admins)})
c.SynapseOAuthenticator.identity_db_url = (
    settings.db_url
    if not settings.db_url.startswith("sqlite")
    else f"sqlite:///{settings.state_dir / 'synapse-identities.sqlite'}"
)

# -- servers: one EC2 instance each, reached through SSM Session Manager ------------------
c.JupyterHub.spawner_class = "ec2"
# One Regions for the whole hub (clients, a poller per region, caches), shared with the
# admin overview and the home page below; the communities as loaded above.
regions = Regions(settings.aws_endpoint_url)
c.EC2Spawner.regions = regions
c.EC2Spawner.communities = communities
c.EC2Spawner.communities_file = str(settings.communities_file)
c.EC2Spawner.hub_id = settings.hub_id
c.EC2Spawner.aws_endpoint_url = settings.aws_endpoint_url
c.EC2Spawner.parameter_prefix = settings.parameter_prefix
c.EC2Spawner.parameter_kms_key_id = settings.parameter_kms_key_id
c.JupyterHub.allow_named_servers = True
# JupyterHub's server API with the hub's rules in front (user_options validated at PUT and
# PATCH, JupyterHub 6's server names on 5.2 too), and its named-server limit from the
# communities' max_servers_per_user: spawner/server_api.py.
c.SynapseOAuthenticator.first_handlers = server_api.server_api_handlers(communities)
c.JupyterHub.named_server_limit_per_user = server_api.named_server_limit(communities)
# Instances call the hub's API (activity, OAuth) over the VPC, never through the proxy.
c.JupyterHub.hub_bind_url = settings.hub_bind_url
c.JupyterHub.hub_connect_url = settings.hub_connect_url
if settings.instance_hub_url:  # the instances' own way to it (local cloud's real boot)
    c.EC2Spawner.hub_connect_url = settings.instance_hub_url
# Stopping or restarting the hub must never stop users' instances.
c.JupyterHub.cleanup_servers = False

# -- reconciliation: no instance runs without a server the hub shows running ------------
c.JupyterHub.services.append(
    {
        "name": "reconciliation",
        "command": [sys.executable, "-m", "operations", "reconcile", "--every", "600"],
        "environment": settings.aws_environment(),
    }
)
c.JupyterHub.load_roles.append(
    {
        "name": "reconciliation",
        "description": "Compare the hub's servers with its instances; stop unseen instances",
        "scopes": ["list:users", "read:users:name", "read:servers", "admin:server_state"],
        "services": ["reconciliation"],
    }
)

# -- idle culling: stop (never delete) servers idle longer than their community allows ---
# One jupyterhub-idle-culler service per community, whose role only reaches that community's
# group; activity is what the notebook servers report, not proxied traffic. The rules, and
# why: hub_config/culling.py; IDLE_TIMEOUT_SECONDS / CULL_EVERY_SECONDS to try it quickly.
from hub_config import culling  # noqa: E402 - this block's own import

cull_overrides = settings.cull_overrides
cull_services, cull_roles = culling.culler_services(communities, cull_overrides)
c.JupyterHub.services.extend(cull_services)
c.JupyterHub.load_roles.extend(cull_roles)
c.JupyterHub.proxy_class = culling.activity_proxy_class()
cull_rules = culling.cull_rules(communities, cull_overrides)
c.Spawner.environment.update(
    {"JUPYTERHUB_ACTIVITY_INTERVAL": str(culling.activity_interval(cull_rules))}
)
# Each instance's own idle limit (its backstop), from the same rules.
c.EC2Spawner.backstop_idle_seconds = {
    rule.community: culling.backstop_idle_seconds(rule.timeout_seconds) for rule in cull_rules
}
# -- end of idle culling ---------------------------------------------------------------

# -- operations: audit log, Prometheus metrics (/hub/metrics), the admin's server overview --
from operations import audit as snh_audit  # noqa: E402 - this block's own imports
from operations import metrics as _snh_metrics  # noqa: E402, F401 - registers the snh_* metrics
from operations.admin_page import TEMPLATE_PATH as SPAWNER_TEMPLATES  # noqa: E402
from operations.admin_page import overview_handler  # noqa: E402
from operations.audit_page import audit_page_handler  # noqa: E402

snh_audit.configure(settings.state_dir / "audit.log")
c.JupyterHub.template_paths = [TEMPLATE_PATH, SPAWNER_TEMPLATES]
c.JupyterHub.extra_handlers = [
    overview_handler(
        regions=regions,
        hub_id=settings.hub_id,
        communities=communities,
        audit_log=str(settings.state_dir / "audit.log"),
    ),
    # /hub/audit: the log's newest lines for admins and operators, filtered
    audit_page_handler(settings.state_dir / "audit.log"),
]

# -- the relay: the owner's own computer to a port of their running server ---------------
# (snh ssh-proxy / snh forward --server). Only the owner's tokens with the custom:snh-relay
# scope open it: the user role holds it on the user's own servers only; operators do not.
from operations import relay  # noqa: E402 - this block's own import

c.JupyterHub.custom_scopes = relay.CUSTOM_SCOPES
c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self", f"{relay.SCOPE}!user"]})
c.JupyterHub.extra_handlers.extend(relay.relay_handlers())

# -- SSH keys: kept by the hub (/hub/ssh-keys), given to each server at its start ----------
from operations import connect_panel, ssh_keys  # noqa: E402 - this block's own imports

_ssh_keys = ssh_keys.SshKeyStore(c.SynapseOAuthenticator.identity_db_url)
c.JupyterHub.extra_handlers.extend(ssh_keys.ssh_keys_handlers(_ssh_keys))
c.EC2Spawner.ssh_authorized_keys = ssh_keys.keys_source(_ssh_keys)
c.SynapseOAuthenticator.forget_on_delete = [_ssh_keys.forget]
c.JupyterHub.template_vars.update(
    {
        connect_panel.TEMPLATE_VAR: connect_panel.ConnectPanel(
            hub_url=settings.public_url, ssh_user=settings.ssh_user
        )
    }
)

# -- home page: "Stopped since …, will be removed on …" under each stopped server ----------
from operations import home_page  # noqa: E402 - this block's own import

c.JupyterHub.template_vars.update(
    {
        home_page.TEMPLATE_VAR: home_page.HomeNotices(
            regions=regions,
            hub_id=settings.hub_id,
            communities=communities,
            audit_log=str(settings.state_dir / "audit.log"),
        )
    }
)
# -- end of the home page's stopped-server line ------------------------------------------

# -- budgets: a start refused over a community's (or a member's) monthly budget, warned at 80 %
from hub_config.communities import load_price_table  # noqa: E402 - this block's own imports
from operations import budget, reports_page  # noqa: E402

_budgets = budget.BudgetGuard(
    regions=regions,
    hub_id=settings.hub_id,
    communities=communities,
    prices=load_price_table(),
    audit_log=str(settings.state_dir / "audit.log"),
)
c.EC2Spawner.budget_check = _budgets.check
c.JupyterHub.template_vars.update({"snh_spend": budget.HomeSpend(_budgets)})
c.JupyterHub.extra_handlers.append(reports_page.reports_handler(_budgets))

# -- before a stop (idle cull, spent budget): the owner is warned on the home page, in
# JupyterLab and by e-mail; Keep running keeps an idle server (bounded) ---------------------
from operations import keep_running, stop_watch  # noqa: E402 - this block's own imports

_keep = keep_running.KeepRunning(communities, cull_rules)
_watch = stop_watch.StopWatch(
    _keep, guard=_budgets, smtp=settings.smtp, hub_url=settings.public_url
)
c.EC2Spawner.running_checks = [_watch.check]
c.JupyterHub.extra_handlers.extend(keep_running.keep_running_handlers(_keep))
c.JupyterHub.extra_handlers.extend(stop_watch.stop_watch_handlers(_watch))
c.JupyterHub.template_vars.update({stop_watch.TEMPLATE_VAR: stop_watch.NoticeVar(_watch)})

if settings.extra_config is not None:
    load_subconfig(str(settings.extra_config))  # noqa: F821 - provided by JupyterHub
