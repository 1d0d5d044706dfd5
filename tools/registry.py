"""An immutable, picklable set of tools plus the base URL of each system that serves them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import httpx

from opsagent.errors import ToolCallError, ToolError
from opsagent.tools.openapi import tools_from_openapi
from opsagent.tools.spec import ToolSpec


class ToolRegistry:
    """Tools by name. Plain data only, so it pickles (it is sent to Ray actors)."""

    __slots__ = ("_base_urls", "_specs")

    def __init__(self, specs: Iterable[ToolSpec], base_urls: dict[str, str]):
        by_name: dict[str, ToolSpec] = {}
        for spec in specs:
            if spec.name in by_name:
                raise ToolError(f"duplicate tool name {spec.name!r}")
            if spec.system not in base_urls:
                raise ToolError(f"tool {spec.name!r} belongs to {spec.system!r}, which has no base URL")
            by_name[spec.name] = spec
        self._specs = dict(sorted(by_name.items()))
        self._base_urls = {system: url.rstrip("/") for system, url in base_urls.items()}

    def get(self, name: str) -> ToolSpec:
        """The tool called `name`; ToolError if there is none."""
        try:
            return self._specs[name]
        except KeyError:
            raise ToolError(f"unknown tool {name!r}; known tools: {', '.join(self._specs)}") from None

    def names(self) -> list[str]:
        """Every tool name, sorted."""
        return list(self._specs)

    def specs(self) -> list[ToolSpec]:
        """Every tool, sorted by name."""
        return list(self._specs.values())

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """A registry with only these tools (ToolError for an unknown name)."""
        return ToolRegistry([self.get(n) for n in dict.fromkeys(names)], self._base_urls)

    def base_url(self, system: str) -> str:
        """The base URL of a system; ToolError if unknown."""
        try:
            return self._base_urls[system]
        except KeyError:
            raise ToolError(f"unknown system {system!r}; known: {', '.join(self._base_urls)}") from None

    @property
    def base_urls(self) -> dict[str, str]:
        return dict(self._base_urls)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self.specs())

    def __len__(self) -> int:
        return len(self._specs)

    def __getstate__(self) -> tuple[dict, dict]:
        return self._specs, self._base_urls

    def __setstate__(self, state: tuple[dict, dict]) -> None:
        self._specs, self._base_urls = state

    def __repr__(self) -> str:
        return f"ToolRegistry({len(self)} tools, systems={sorted(self._base_urls)})"

    @classmethod
    def from_services(cls, base_urls: dict[str, str], client: httpx.Client | None = None) -> ToolRegistry:
        """Build the registry from each service's /openapi.json (ToolCallError if one cannot be read)."""
        own = client is None
        http = client or httpx.Client(timeout=10.0)
        specs: list[ToolSpec] = []
        try:
            for system, url in base_urls.items():
                try:
                    response = http.get(f"{url.rstrip('/')}/openapi.json")
                    response.raise_for_status()
                    doc = response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise ToolCallError(f"cannot read the {system} OpenAPI document at {url}: {exc}") from exc
                specs += tools_from_openapi(doc, system)
        finally:
            if own:
                http.close()
        return cls(specs, base_urls)
