"""Jinja2 templates of moonraker.conf options (Moonraker's ``template``
component): ``{expr}`` for values, ``{% ... %}`` for statements, the ``do``
extension, ``{secrets.SECTION.KEY}`` and the ``fromjson`` filter.

Used by the generic ``http`` power device (``on_url``, ``request_template``,
``response_template``) and ``[button]`` templates.  Spec: configuration.md "Jinja2 Templates",
"[secrets]".
"""
from __future__ import annotations

import json
from typing import Any

import jinja2

from ..config import ConfigError


class TemplateError(Exception):
    """Rendering a template failed; the message names the option."""


def template_env() -> jinja2.Environment:
    """The environment every configuration template is compiled in.

    Templates come from the machine owner's moonraker.conf (trusted), so the
    environment is not sandboxed: button templates call dict methods such as
    ``user_data.__setitem__`` as the spec's examples do.
    """
    env = jinja2.Environment(block_start_string="{%", block_end_string="%}",
                             variable_start_string="{", variable_end_string="}",
                             comment_start_string="{#", comment_end_string="#}",
                             extensions=["jinja2.ext.do"], autoescape=False,
                             undefined=jinja2.StrictUndefined, trim_blocks=True)
    env.filters["fromjson"] = json.loads
    return env


_ENV = template_env()


class Template:
    """One compiled template option.

    Args:
        source: the option's raw text.
        where: ``"[section] option"`` for error messages.
        secrets: the ``[secrets]`` data (``config.secrets``), available as
            ``secrets`` in the context.
    Raises:
        ConfigError: the template does not compile.
    """

    def __init__(self, source: str, where: str, secrets: dict | None = None) -> None:
        self.source = source
        self.where = where
        self.secrets = secrets or {}
        try:
            self._tmpl = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise ConfigError(f"Error compiling template {where}: {err}") from None

    def render(self, context: dict[str, Any] | None = None) -> str:
        """Render with ``context`` (plus ``secrets``); returns the text, stripped.

        Raises: TemplateError with the cause when rendering raises (an API
        error raised inside the template keeps its message).
        """
        ctx = {"secrets": self.secrets}
        ctx.update(context or {})
        try:
            return self._tmpl.render(ctx).strip()
        except TemplateError:
            raise
        except Exception as err:
            message = getattr(err, "message", None) or str(err)
            raise TemplateError(f"Error rendering template {self.where}: {message}") from err


def get_template(section: Any, option: str, default: Any = ...) -> Template | None:
    """The template option ``option`` of config ``section`` (raw text, not
    secret-substituted: the template sees ``secrets`` itself).

    Returns None when the option is absent and ``default`` is None.
    Raises: ConfigError when it is absent and required, or does not compile.
    """
    raw = section.get(option, None) if default is not ... else section.get(option)
    if raw is None:
        return None
    return Template(raw, f"[{section.name}] {option}", section.cfg.secrets)
