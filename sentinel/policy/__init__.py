"""Response policies at the proxy: sampling bounds, keyword/regex rules, PHI detection, Dify moderation.

`PolicyStore` loads and hot-reloads the policy file, `PolicyHook` applies it on the request path,
`ModerationEndpoint` answers Dify's moderation extension with the same rules. See docs/policy.md.
"""

from sentinel.policy.changes import PolicyChange, PolicyHistory
from sentinel.policy.compiled import Policy
from sentinel.policy.hook import PolicyHook
from sentinel.policy.loading import PolicyError, load_policy, parse_policy
from sentinel.policy.metrics import PolicyMetrics
from sentinel.policy.moderation import ModerationEndpoint
from sentinel.policy.store import PolicyStore

__all__ = [
    "ModerationEndpoint",
    "Policy",
    "PolicyChange",
    "PolicyError",
    "PolicyHistory",
    "PolicyHook",
    "PolicyMetrics",
    "PolicyStore",
    "load_policy",
    "parse_policy",
]
