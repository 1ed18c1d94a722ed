"""`stablelab.proxy.study`: the proxy study on your own model (see stablelab.studies.proxy_api)."""

from stablelab.studies.proxy_api import study

__all__ = ["study"]
