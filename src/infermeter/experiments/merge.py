"""Merging stores moved to infermeter.store.merge (all SQL lives in infermeter.store); this
name stays importable for infermeter.cli.sweep."""

from infermeter.store.merge import MergeReport, merge_stores

__all__ = ["MergeReport", "merge_stores"]
