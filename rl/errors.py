"""Typed errors, in Gymnasium's error.py style: callers catch `OssGrpoError` and show one line."""


class OssGrpoError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(OssGrpoError):
    """A config file, key or value is wrong; the message names the key and the reason."""


class PluginError(OssGrpoError):
    """A reward or environment plugin is malformed (bad signature, duplicate name, bad return)."""


class UnknownPlugin(PluginError):
    """No reward or environment is registered under the requested name."""


class SandboxError(OssGrpoError):
    """The sandbox itself could not run (not the untrusted code failing, which is a result)."""


class CheckpointError(OssGrpoError):
    """A run folder or checkpoint is missing or unreadable."""


class GeneratorError(OssGrpoError):
    """The rollout backend failed (engine died, request too long, out of KV cache, empty output)."""
