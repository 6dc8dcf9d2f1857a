"""Load YAML keeping the line of every key and item, so errors can name it.

Pure apart from reading the text handed in; ``load_with_lines`` returns the
plain data plus a map from path (tuple of keys and indices) to 1-based line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# PyYAML is imported by the functions that read YAML, not here: a restarting gateway whose
# compiled site comes from its cache (gateway.site_stamp) imports parking.site, and so this
# module, but reads no YAML (PyYAML's import is ~10 ms of its start)
if TYPE_CHECKING:
    import yaml

Path = tuple[str | int, ...]

_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _composer() -> Any:
    """libyaml's composer when PyYAML was built with it (the wheels are): the same nodes and
    line marks, ~6x faster, which a restarting gateway feels (the site is parsed on start)."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlSyntaxError(ValueError):
    pass


def load_with_lines(text: str, filename: str = "<string>") -> tuple[Any, dict[Path, int]]:
    """Parse YAML text into Python data and a path-to-line map."""
    import yaml

    try:
        node = yaml.compose(text, Loader=_composer())
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, filename) from None
    if "&" in text or "*" in text:  # only then can there be one; a scan costs a little
        _refuse_anchors(text, filename)
    lines: dict[Path, int] = {}
    if node is None:
        return {}, lines
    constructor = yaml.SafeLoader("")

    def build(n: yaml.Node, path: Path) -> Any:
        lines[path] = n.start_mark.line + 1
        if n.tag not in _PLAIN_COLLECTION_TAGS and not isinstance(n, yaml.ScalarNode):
            # collections are built here, not by the constructor: refuse what it would
            raise YamlSyntaxError(
                f"{filename}:{n.start_mark.line + 1}: invalid YAML: tag {n.tag!r} is not allowed"
            )
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = constructor.construct_object(key_node, deep=True)
                if key in out:
                    raise YamlSyntaxError(
                        f"{filename}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
                    )
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = build(value_node, (*path, key))
                lines[(*path, key)] = key_node.start_mark.line + 1
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    try:
        return build(node, ()), lines
    except yaml.YAMLError as exc:  # e.g. a tag safe loading refuses (!!python/object)
        raise _syntax_error(exc, filename) from None


def _refuse_anchors(text: str, filename: str) -> None:
    """Refuse anchors (&a) and aliases (*a): a site file needs neither, and each alias would
    be expanded into a copy ("billion laughs": a few lines taking gigabytes). Names the first
    alias, else the first anchor."""
    import yaml

    anchor: yaml.Token | None = None
    for token in yaml.scan(text, Loader=_composer()):
        if isinstance(token, yaml.AliasToken):
            raise YamlSyntaxError(
                f"{filename}:{token.start_mark.line + 1}: invalid YAML: alias *{token.value} is"
                " not allowed: site files take no anchors (&) or aliases (*), write the value out"
            )
        if anchor is None and isinstance(token, yaml.AnchorToken):
            anchor = token
    if anchor is not None:
        raise YamlSyntaxError(
            f"{filename}:{anchor.start_mark.line + 1}: invalid YAML: anchor &{anchor.value} is"
            " not allowed: site files take no anchors (&) or aliases (*)"
        )


def _syntax_error(exc: yaml.YAMLError, filename: str) -> YamlSyntaxError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{filename}:{mark.line + 1}" if mark else filename
    return YamlSyntaxError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}")


def text_of_scalar(text: str, loc: tuple[Any, ...], source: list[Any]) -> str | None:
    """The text of the scalar at ``loc`` as written in ``text`` ('no', '1.0', '12:30');
    ``source`` keeps the composed document between calls (empty: composed on the first)."""
    import yaml

    if not source:
        try:
            source.append(yaml.compose(text, Loader=_composer()))
        except yaml.YAMLError:  # parsed once already: cannot happen
            source.append(None)
    node = source[0]
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next(
                (
                    v
                    for k, v in node.value
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part)
                ),
                None,
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if 0 <= part < len(node.value) else None
        else:
            return None
    return node.value if isinstance(node, yaml.ScalarNode) else None


def line_of(lines: dict[Path, int], loc: tuple[Any, ...]) -> int | None:
    """Line of the deepest known prefix of ``loc``; elements YAML never had
    (pydantic's union tags such as 'list[str]') are skipped."""
    best: int | None = lines.get(())
    path: Path = ()
    for part in loc:
        candidate = (*path, part)
        if candidate in lines:
            path = candidate
            best = lines[candidate]
    return best


def format_loc(loc: tuple[Any, ...]) -> str:
    """('spaces', 3, 'zone') -> 'spaces[3].zone'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"
