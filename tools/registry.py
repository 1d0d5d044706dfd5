"""An immutable, picklable set of tools plus the source (connection config) of each system."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import httpx

from opsagent.errors import ToolCallError, ToolError
from opsagent.tools.openapi import tools_from_openapi
from opsagent.tools.sources import McpSource, OpenAPISource
from opsagent.tools.spec import ToolSpec

Source = OpenAPISource | McpSource


class ToolRegistry:
    """Tools by name, and per system the source they are called through. Plain data only, so it
    pickles (it is sent to Ray actors); sources name secrets, they never hold them.

    `base_urls` (system -> URL) is shorthand for OpenAPI sources with no auth and no retries;
    `sources` gives the full config (auth, timeouts, retries; MCP servers).
    """

    __slots__ = ("_sources", "_specs")

    def __init__(self, specs: Iterable[ToolSpec], base_urls: dict[str, str] | None = None, *,
                 sources: Iterable[Source] = ()) -> None:
        by_system: dict[str, Source] = {
            system: OpenAPISource(name=system, base_url=url.rstrip("/"), retries=0)
            for system, url in (base_urls or {}).items()
        }
        for source in sources:
            if source.name in by_system:
                raise ToolError(f"two sources for system {source.name!r}")
            by_system[source.name] = source
        by_name: dict[str, ToolSpec] = {}
        for spec in specs:
            if spec.name in by_name:
                raise ToolError(f"duplicate tool name {spec.name!r}")
            source = by_system.get(spec.system)
            if source is None:
                raise ToolError(f"tool {spec.name!r} belongs to {spec.system!r}, which has no base URL or source")
            if source.kind != spec.source:
                raise ToolError(f"tool {spec.name!r} is an {spec.source} tool but {spec.system!r} is an "
                                f"{source.kind} source")
            by_name[spec.name] = spec
        self._specs = dict(sorted(by_name.items()))
        self._sources = by_system

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
        return ToolRegistry([self.get(n) for n in dict.fromkeys(names)], sources=self._sources.values())

    def merge(self, other: ToolRegistry) -> ToolRegistry:
        """Both registries' tools and sources (ToolError on a clashing tool or system name)."""
        return ToolRegistry([*self.specs(), *other.specs()],
                            sources=[*self._sources.values(), *other._sources.values()])

    def source(self, system: str) -> Source:
        """How a system is called; ToolError if unknown."""
        try:
            return self._sources[system]
        except KeyError:
            raise ToolError(f"unknown system {system!r}; known: {', '.join(self._sources)}") from None

    def sources(self) -> list[Source]:
        """Every system's source."""
        return list(self._sources.values())

    def base_url(self, system: str) -> str:
        """The base URL of an OpenAPI system; ToolError if unknown or not served over OpenAPI."""
        source = self.source(system)
        if not isinstance(source, OpenAPISource):
            raise ToolError(f"system {system!r} is an MCP server, it has no base URL")
        return source.base_url.rstrip("/")

    @property
    def base_urls(self) -> dict[str, str]:
        """System -> base URL, for the OpenAPI systems."""
        return {name: s.base_url.rstrip("/") for name, s in self._sources.items() if isinstance(s, OpenAPISource)}

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self.specs())

    def __len__(self) -> int:
        return len(self._specs)

    def __getstate__(self) -> tuple[dict, dict]:
        return self._specs, self._sources

    def __setstate__(self, state: tuple[dict, dict]) -> None:
        self._specs, self._sources = state

    def __repr__(self) -> str:
        return f"ToolRegistry({len(self)} tools, systems={sorted(self._sources)})"

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
