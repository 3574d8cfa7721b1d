"""Counting the model loads a run makes, to show what a cache hit or a rescore does not load."""
from __future__ import annotations


class LoadCounter:
    """Counts model loads by wrapping the adapters' constructors."""

    def __init__(self, monkeypatch):
        from csr_core.adapters.relevance import OpenClipRelevance
        from csr_core.adapters.vlm import VLMAdapter

        self.calls = {"vlm": 0, "clip": 0}
        for name, cls in (("vlm", VLMAdapter), ("clip", OpenClipRelevance)):
            original = cls.from_pretrained.__func__
            monkeypatch.setattr(cls, "from_pretrained", classmethod(self._counting(name, original)))

    def _counting(self, name, original):
        def wrapper(cls, *args, **kwargs):
            self.calls[name] += 1
            return original(cls, *args, **kwargs)
        return wrapper
