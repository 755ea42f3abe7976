"""Response policies at the proxy: sampling bounds, keyword/regex rules, PHI detection, Dify moderation.

`PolicyStore` loads and hot-reloads the policy file, `PolicyHook` applies it on the request path,
`ModerationEndpoint` answers Dify's moderation extension with the same rules. See docs/policy.md.
"""
