"""The label sets of Prometheus series, as the text format writes them."""

from __future__ import annotations


def labels(**named: str) -> str:
    """``{a="x",b="y"}``: the label set of a series, its values escaped."""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in named.items()) + "}"
