"""The published Jinja2 sandbox escapes and resource attacks, fed to the `template` format: each is
refused (a config error at start-up naming the key, and a one-line RenderError at run time) or bounded.

Sources of the escapes: Jinja2 advisories CVE-2016-10745 (`str.format`), CVE-2019-10906
(`str.format_map`), CVE-2024-56326 (a stored reference to `str.format`), CVE-2025-27516 (`|attr` reaching
`str.format`, fixed in 3.1.6); the classic server-side template injection payloads (`__class__` /
`__mro__` / `__subclasses__` walks, `__globals__` through the `lipsum`, `cycler`, `joiner`, `namespace`
and `range` globals, `self.__init__`, `loop`); and resource exhaustion (`range`, string and list
multiplication, huge powers, doubling with `~`, `%` formatting, padding methods, recursion, nested loops).
"""

from __future__ import annotations

import time

import pytest

from watcher.delivery.formats import RenderError
from watcher.delivery.formats.template import SAMPLE_EVENT, compile_template, validate_template
from watcher.errors import ConfigError

KEY = "webhooks[3].template"
NESTED_7 = "".join("{% for v" + str(i) + " in data.job %}" for i in range(7)) + "1" + "{% endfor %}" * 7
DOUBLING = "{% set x = 'ab' %}" + "{% set x = x ~ x %}" * 40 + '{"n": {{ x | tojson }}}'
MANY_BIG_VALUES = (
    # Each value stays under the per-value limit (about 250,000 characters); together they pass the
    # render's allocation budget.
    "{% set s = data.job.name | replace('', 'a' * 1190) %}"
    + "".join(f"{{% set v{i} = s | replace('a', 'bbbbbbbbbb') %}}" for i in range(60))
    + "{}"
)

# (name, template, why): every entry must be refused or bounded, and for the reason given: a template
# that escaped would mostly print something that is not JSON, so "not JSON" must not be what stops it.
NOT_ALLOWED = "is not allowed in templates"
TOO_LONG = "characters is longer than 262144"
INT_BITS = "integers are limited to 4096 bits"
ESCAPES = [
    # The str.format family (CVE-2016-10745, CVE-2019-10906, CVE-2024-56326, CVE-2025-27516).
    ("str.format", '{{ "{0.__class__.__init__.__globals__}".format(data) }}',
     f"calling 'format' {NOT_ALLOWED}"),
    ("str.format attribute walk", '{{ "{0.__class__.__mro__[1].__subclasses__}".format("") }}',
     "calling 'format'"),
    ("str.format_map", '{{ "{x.__class__}".format_map({"x": data}) }}',
     f"calling 'format_map' {NOT_ALLOWED}"),
    ("stored str.format", '{% set f = "{0.__class__}".format %}{{ f(data) }}', "calling 'format'"),
    ("stored str.format_map", '{% set f = "{a.__class__}".format_map %}{{ f({"a": data}) }}',
     "calling 'format_map'"),
    ("|attr to str.format", '{{ ("{0.__class__}" | attr("format"))(data) }}', "No filter named 'attr'"),
    ("|attr walk", '{{ data | attr("__class__") | attr("__mro__") }}', "No filter named 'attr'"),
    ("|map to format", '{{ ["{0.__class__}"] | map("format", data) | first }}', "No filter named"),
    # Attribute walks to Python's internals.
    ("__class__.__mro__.__subclasses__", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
     "access to attribute '__class__' of 'str' object is unsafe"),
    ("__base__.__subclasses__", "{{ data.__class__.__base__.__subclasses__() }}",
     "access to attribute '__class__' of 'dict' object is unsafe"),
    ("subscript __class__", "{{ ''['__class__']['__mro__'] }}", "access to attribute '__class__'"),
    ("method __self__", "{{ data.items.__self__ }}", "access to attribute '__self__'"),
    ("method __func__ globals", "{{ data.get.__func__.__globals__ }}", "has no attribute '__func__'"),
    # Globals that lead to `os` in an ordinary environment.
    ("lipsum.__globals__", "{{ lipsum.__globals__['os'].popen('id').read() }}", "'lipsum' is undefined"),
    ("cycler.__init__.__globals__", "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
     "'cycler' is undefined"),
    ("joiner.__init__.__globals__", "{{ joiner.__init__.__globals__.os }}", "'joiner' is undefined"),
    ("namespace.__init__.__globals__", "{{ namespace.__init__.__globals__.os }}", "'namespace' is undefined"),
    ("range.__globals__", "{{ range.__globals__ }}", "'range' is undefined"),
    ("dict global", "{{ dict(a=1) }}", "'dict' is undefined"),
    ("self.__init__.__globals__", "{{ self.__init__.__globals__.__builtins__ }}",
     "access to attribute '__init__' of 'TemplateReference' object is unsafe"),
    ("self private context", "{{ self._TemplateReference__context }}",
     "access to attribute '_TemplateReference__context'"),
    ("loop.__class__", "{% for x in [1] %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
     "access to attribute '__class__' of 'LoopContext' object is unsafe"),
    ("loop private", "{% for x in [1] %}{{ loop._iterator }}{% endfor %}", "access to attribute '_iterator'"),
    ("config / request (Flask SSTI)", "{{ config.items() }}{{ request.application.__globals__ }}",
     "'config' is undefined"),
    # Loading other templates or files.
    ("include a file", '{% include "/etc/passwd" %}', "no loader"),
    ("import a module", '{% import "os" as os %}{{ os }}', "no loader"),
    ("extends", '{% extends "base.json" %}', "no loader"),
    # Filters outside the allow-list (xmlattr: CVE-2024-22195 / CVE-2024-34064).
    ("xmlattr", "{{ {'a': 1} | xmlattr }}", "No filter named 'xmlattr'"),
    ("format filter", '{{ "%s" | format(data) }}', "No filter named 'format'"),
    ("filter block", "{% filter format(1) %}%s{% endfilter %}", "No filter named 'format'"),
    # Mutation of the context (ImmutableSandboxedEnvironment and the call allow-list).
    ("dict.update", "{{ data.labels.update({'a': 'b'}) }}", "access to attribute 'update' of 'dict'"),
    ("dict.pop", "{{ data.job.pop('id') }}", "access to attribute 'pop' of 'dict'"),
    ("list.append", "{{ [].append(1) }}", "access to attribute 'append' of 'list'"),
    ("str.join method", "{{ ''.join(['a', 'b']) }}", f"calling 'join' {NOT_ALLOWED}"),
    # Memory and CPU.
    ("range exhaustion", "{% for i in range(10**9) %}{% endfor %}", "'range' is undefined"),
    ("string multiplication", "{{ 'a' * 10**9 }}", f"a value of 1000000000 {TOO_LONG}"),
    ("list multiplication", "{{ [0] * 10**9 }}", f"a value of 1000000000 {TOO_LONG}"),
    ("string multiplication in steps", "{% set a = 'a' * 200000 %}{{ a * 2 }}",
     f"a value of 400000 {TOO_LONG}"),
    ("string addition", "{% set a = data.job.name * 8000 %}{{ a + a }}", f"a value of 320000 {TOO_LONG}"),
    ("huge power", "{{ 9 ** (9 ** 9) }}", INT_BITS),
    ("huge product", "{% set a = 2 ** 4000 %}{{ a * a }}", INT_BITS),
    ("concat doubling", DOUBLING, f"a value of 524288 {TOO_LONG}"),
    ("many big values", MANY_BIG_VALUES, "template made more than 2097152 characters of values"),
    ("percent formatting", '{{ "%0999999999d" % 1 }}', f"string formatting with % {NOT_ALLOWED}"),
    ("percent formatting of data", '{{ "%s" % data }}', f"string formatting with % {NOT_ALLOWED}"),
    ("ljust", "{{ 'x'.ljust(10**9) }}", f"calling 'ljust' {NOT_ALLOWED}"),
    ("center", "{{ 'x'.center(10**9) }}", f"calling 'center' {NOT_ALLOWED}"),
    ("zfill", "{{ '1'.zfill(10**9) }}", f"calling 'zfill' {NOT_ALLOWED}"),
    ("expandtabs", "{{ '\\t'.expandtabs(10**9) }}", f"calling 'expandtabs' {NOT_ALLOWED}"),
    ("replace blow-up", "{{ data.job.error | replace('', 'x' * 25000) }}", TOO_LONG),
    ("join blow-up", "{{ data.job | join('y' * 200000) }}", TOO_LONG),
    ("macro recursion", "{% macro r(n) %}{{ r(n) }}{% endmacro %}{{ r(1) }}", "recursion is too deep"),
    ("mutual recursion",
     "{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}",
     "recursion is too deep"),
    ("nested loops", NESTED_7, "template ran more than 200000 steps"),
    ("output over 256 KiB", "[" + "{% for a in data.job %}{% for b in data.job %}" + '"{{ "z" * 5000 }}",'
     + "{% endfor %}{% endfor %}0]", "output is more than 262144 bytes"),
    ("parser recursion", "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "recursion is too deep"),
    ("not JSON", "{{ data }}", "output is not JSON"),
    ("NaN literal", '{"x": NaN}', "output is not JSON: NaN is not JSON"),
    ("Infinity via number", '{"x": 1e400}', "output is not JSON: 1e400 is out of JSON's number range"),
]  # fmt: skip

# Nothing of these may ever reach an error text: they would mean an internal object was reached.
LEAKS = ("<class", "<function", "<module", "popen", "__builtins__", "root:")


@pytest.mark.parametrize(("name", "source", "why"), ESCAPES, ids=[name for name, _, _ in ESCAPES])
def test_each_escape_is_a_config_error_naming_the_key(name: str, source: str, why: str) -> None:
    """At start-up, the template is refused with one line that names `webhooks[i].template`."""
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        validate_template(source, KEY)
    assert time.monotonic() - started < 20, "an escape must be stopped, not merely survived"
    (problem,) = caught.value.problems
    assert problem.startswith(f"{KEY}: ")
    assert "\n" not in problem
    assert not any(leak in problem for leak in LEAKS), problem
    assert why in problem


@pytest.mark.parametrize(("name", "source", "why"), ESCAPES, ids=[name for name, _, _ in ESCAPES])
def test_each_escape_is_a_render_error_at_run_time(name: str, source: str, why: str) -> None:
    """A template that got past start-up (e.g. changed on disk) fails its delivery with a RenderError."""
    started = time.monotonic()
    with pytest.raises(RenderError) as caught:
        compile_template(source).render(SAMPLE_EVENT)
    assert time.monotonic() - started < 20
    assert "\n" not in caught.value.reason
    assert not any(leak in caught.value.reason for leak in LEAKS), caught.value.reason
    assert why in caught.value.reason
