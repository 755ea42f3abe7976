"""Response policies at the proxy: sampling bounds, keyword/regex rules, PHI detection, Dify moderation.

`PolicyStore` loads and hot-reloads the policy file, `PolicyHook` applies it on the request path,
`ModerationEndpoint` answers Dify's moderation extension with the same rules. A request is read as the
model server reads it (`parsing`; keys folded as Go's decoder folds them, `keys`) or refused; text is
matched through normalised views mapped back to the forwarded text (`normalise`); `payload`, `streams`
and `responses` say where requests and answers carry text; `width` measures how much of a stream a
pattern needs to see. See docs/policy.md.
"""
