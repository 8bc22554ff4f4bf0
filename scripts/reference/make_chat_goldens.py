#!/usr/bin/env python3
"""Golden outputs for tpserve's chat-template interpreter (common/chat/).

Renders every template in tests/data/golden/chat/templates/ on a set of conversations with
transformers' own chat-template renderer (`render_jinja_template`: ImmutableSandboxedEnvironment,
trim_blocks, lstrip_blocks, loopcontrols, raise_exception, strftime_now, its `tojson`), plus a
table of small template snippets rendered by the same jinja2 environment. A render that raises
records the error instead; the C++ test then expects an error too.

Run from the repository root:
    /work/main/.venv-ref/bin/python scripts/reference/make_chat_goldens.py
Writes tests/data/golden/chat/chat_goldens.json.
"""

import datetime
import json
import pathlib

import jinja2
import transformers
from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN_DIR = ROOT / "tests/data/golden/chat"

# Special tokens each model's tokenizer_config.json passes to the template ("" where the model has
# none, e.g. Qwen's bos_token is null).
TEMPLATES = {
    "smollm2-135m-instruct": ("<|im_start|>", "<|im_end|>"),
    "llama-2-13b-chat": ("<s>", "</s>"),
    "llama-3-8b-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.1-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.2-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "qwen2-instruct": ("", "<|im_end|>"),
    "qwen2.5-instruct": ("", "<|im_end|>"),
    "mistral-7b-instruct-v0.1": ("<s>", "</s>"),
    "mistral-7b-instruct-v0.3": ("<s>", "</s>"),
    "mixtral-8x7b-instruct-v0.1": ("<s>", "</s>"),
    "gemma-7b-it": ("<bos>", "<eos>"),
    "tinyllama-1.1b-chat-v1.0": ("<s>", "</s>"),
    "zephyr-7b-beta": ("<s>", "</s>"),
    "phi-3-mini-instruct": ("<s>", "<|endoftext|>"),
    "phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "deepseek-r1-distill-qwen-32b": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "mistral-small-3.1-24b-instruct-2503": ("<s>", "</s>"),
}

# Templates that call strftime_now() unconditionally: today's date in their output is replaced by
# a placeholder naming the format; the C++ test substitutes its own strftime() before comparing.
DATE_TEMPLATES = {"mistral-small-3.1-24b-instruct-2503": "%Y-%m-%d"}

# Templates that read `date_string` would otherwise print today's date (strftime_now).
EXTRA_KWARGS = {
    "llama-3.1-instruct": {"date_string": "26 Jul 2024"},
    "llama-3.2-instruct": {"date_string": "26 Jul 2024"},
}


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "single_user": [msg("user", "Hello!")],
    "system_multi_turn": [
        msg("system", "You are a helpful assistant."),
        msg("user", "What is 2+2?"),
        msg("assistant", "2+2 equals 4."),
        msg("user", "And 3+3?"),
    ],
    "no_system_multi_turn": [
        msg("user", "Hi there"),
        msg("assistant", "Hello! How can I help?"),
        msg("user", "Tell me a joke."),
        msg("assistant", "Why did the chicken cross the road?"),
        msg("user", "Why?"),
    ],
    "assistant_last": [msg("user", "Say hi."), msg("assistant", "Hi!")],
    "unicode": [
        msg("system", "Réponds en français — s'il te plaît."),
        msg("user", "Héllo wörld, 你好, привет 👋🏽"),
        msg("assistant", "¡Hola! 日本語もOK ✓"),
        msg("user", "Ελληνικά; emoji 🎉 and combining é"),
    ],
    "special_chars": [
        msg("user", "He said \"hi\" and 'bye'.\nSecond line\n\n{{ not a tag }} {% raw %} {# x #}"),
        msg("assistant", "Back\\slash\ttab </s> <|im_end|> [INST] done"),
        msg("user", "  leading and trailing spaces  \n"),
    ],
    "empty_content": [msg("system", ""), msg("user", ""), msg("assistant", ""), msg("user", "")],
    "whitespace_only": [msg("user", " \n\t ")],
    "bad_role_order": [msg("user", "one"), msg("user", "two")],
    "unknown_role": [msg("user", "hi"), msg("narrator", "Meanwhile...")],
    "system_only": [msg("system", "Only a system prompt.")],
    # Multimodal-style content parts: templates that concatenate content fail, those that print it
    # show Python's repr of the list.
    "content_parts": [{"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "image"}]}],
    "long_conversation": [msg("user" if i % 2 == 0 else "assistant", f"turn {i}: " + "x" * i) for i in range(12)],
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
]

TOOL_CONVERSATION = [
    msg("system", "You can call tools."),
    msg("user", "What's the weather in Paris?"),
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
            }
        ],
    },
    {"role": "tool", "name": "get_weather", "content": "{\"temperature\": 21.5, \"sky\": \"clear\"}"},
]

MULTI_TOOL_CONVERSATION = [
    msg("user", "Weather in Paris and Rome?"),
    {
        "role": "assistant",
        "content": "Checking both.",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
        ],
    },
    {"role": "tool", "content": "sunny"},
    {"role": "tool", "content": "rainy"},
    msg("assistant", "Paris is sunny, Rome is rainy."),
]

BUILTIN_TOOL_CONVERSATION = [
    msg("user", "Search the news."),
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "brave_search", "arguments": {"query": "news today"}}}],
    },
    {"role": "ipython", "content": {"results": ["a", "b"]}},
]

DEEPSEEK_TOOL_CONVERSATION = [
    msg("system", "Be brief."),
    msg("user", "What's 2+2 and 3+3?"),
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "calc", "arguments": "{\"expr\": \"2+2\"}"}},
            {"type": "function", "function": {"name": "calc", "arguments": "{\"expr\": \"3+3\"}"}},
        ],
    },
    {"role": "tool", "content": "4"},
    {"role": "tool", "content": "6"},
    msg("assistant", "<think>both done</think>4 and 6."),
    msg("user", "Thanks"),
]

MISTRAL_TOOL_CONVERSATION = [
    msg("user", "Weather in Paris?"),
    {
        "role": "assistant",
        "tool_calls": [{"id": "call_abc123456", "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "tool_call_id": "call_abc123456", "content": "sunny, 24C"},
    msg("assistant", "It is sunny."),
    msg("user", "And tomorrow?"),
]

CONTENT_BLOCKS_CONVERSATION = [
    {"role": "system", "content": [{"type": "text", "text": "System from a block."}]},
    {"role": "user", "content": [{"type": "text", "text": "What is in "}, {"type": "image"}, {"type": "text", "text": "?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    {"role": "user", "content": [{"type": "video"}]},
]

# (conversation name, templates, messages, tools, extra kwargs) for templates that take tools.
TOOL_CASES = [
    ("tools", ["qwen2.5-instruct", "llama-3.1-instruct", "llama-3.2-instruct", "mistral-7b-instruct-v0.3"],
     TOOL_CONVERSATION, TOOLS, {}),
    ("tools_multi_call", ["qwen2.5-instruct", "llama-3.1-instruct"], MULTI_TOOL_CONVERSATION, TOOLS, {}),
    ("tools_in_system", ["llama-3.1-instruct", "llama-3.2-instruct"], TOOL_CONVERSATION, TOOLS,
     {"tools_in_user_message": False}),
    ("builtin_tools", ["llama-3.1-instruct"], BUILTIN_TOOL_CONVERSATION, None,
     {"builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"]}),
    ("tools_no_user_message", ["llama-3.1-instruct"], [msg("system", "sys only")], TOOLS, {}),
    ("tools_string_args", ["deepseek-r1-distill-qwen-32b"], DEEPSEEK_TOOL_CONVERSATION, None, {}),
    ("tools_with_ids", ["mistral-small-3.1-24b-instruct-2503"], MISTRAL_TOOL_CONVERSATION, TOOLS, {}),
    ("content_blocks", ["mistral-small-3.1-24b-instruct-2503"], CONTENT_BLOCKS_CONVERSATION, None, {}),
]


def render_case(source, messages, add_generation_prompt, bos, eos, tools=None, extra=None,
                date_format=None):
    extra = dict(extra or {})
    context = {
        "messages": messages,
        "tools": tools,
        "documents": None,
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos,
        "eos_token": eos,
        **extra,
    }
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=source,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
            **extra,
        )
        expected = rendered[0]
        if date_format is not None:
            today = datetime.datetime.now().strftime(date_format)
            expected = expected.replace(today, f"<<strftime_now:{date_format}>>")
        return {"context": context, "expected": expected}
    except Exception as e:  # noqa: BLE001 - any template error is a golden "error" outcome.
        return {"context": context, "error": f"{type(e).__name__}: {e}"}


def template_cases():
    cases = []
    for name, (bos, eos) in TEMPLATES.items():
        source = (GOLDEN_DIR / "templates" / f"{name}.jinja").read_text()
        for conv_name, messages in CONVERSATIONS.items():
            for agp in (False, True):
                case = render_case(source, messages, agp, bos, eos, extra=EXTRA_KWARGS.get(name),
                                   date_format=DATE_TEMPLATES.get(name))
                cases.append({"template": name, "conversation": conv_name, **case})
        for conv_name, names, messages, tools, extra in TOOL_CASES:
            if name not in names:
                continue
            for agp in (False, True):
                case = render_case(source, messages, agp, bos, eos, tools=tools,
                                   extra={**EXTRA_KWARGS.get(name, {}), **extra},
                                   date_format=DATE_TEMPLATES.get(name))
                cases.append({"template": name, "conversation": conv_name, **case})
    return cases


# (name, template, context): small programs covering the interpreter's subset one feature at a time.
SNIPPETS = [
    # Literals and printing (Python str()/repr()).
    ("print_literals", "{{ 1 }}|{{ -2 }}|{{ 2.5 }}|{{ 1e20 }}|{{ 1.5e-7 }}|{{ 3.0 }}|{{ 'a' }}|{{ \"b\" }}", {}),
    ("print_constants", "{{ true }} {{ True }} {{ false }} {{ none }} {{ None }}", {}),
    ("print_containers", "{{ [1, 'a', none, true, 2.0] }} {{ {'k': \"it's\", 'n': [1]} }} {{ (1, 2) }} {{ (1,) }}", {}),
    ("print_repr_quotes", "{{ [\"a'b\", 'c\"d', 'e\\nf', 'back\\\\slash'] }}", {}),
    ("string_escapes", "{{ 'tab\\there' }}|{{ \"q\\\"q\" }}|{{ '\\x41\\u00e9\\U0001F600' }}|{{ 'a' 'b' }}", {}),
    ("print_undefined", "[{{ missing }}][{{ d.missing }}]", {"d": {}}),
    ("print_float_repr", "{{ 0.1 + 0.2 }} {{ 1/3 }} {{ 100000000000000000.0 }} {{ 0.0001 }} {{ 0.00001 }} {{ 123456789.125 }}", {}),
    # Arithmetic and operators.
    ("arithmetic", "{{ 1 + 2 * 3 - 4 / 2 }} {{ (1 + 2) * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }}", {}),
    ("arithmetic_float", "{{ 7.5 // 2 }} {{ 7.5 % 2 }} {{ 2 ** -1 }} {{ 10 / 5 }} {{ 1 + true }} {{ 2 * 1.5 }}", {}),
    ("string_ops", "{{ 'ab' + 'cd' }} {{ 'ab' * 3 }} {{ 'x' ~ 1 ~ none ~ true ~ missing }} {{ [1] + [2, 3] }}", {}),
    ("division_by_zero", "{{ 1 / 0 }}", {}),
    ("add_int_str_error", "{{ 1 + 'a' }}", {}),
    ("add_undefined_error", "{{ missing + 1 }}", {}),
    # Comparisons and logic.
    ("comparisons", "{{ 1 == 1.0 }} {{ 1 != 2 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 2 >= 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}", {}),
    ("compare_types", "{{ 'a' == 1 }} {{ none == none }} {{ missing == missing }} {{ missing != 1 }} {{ [1] == [1] }} {{ {'a': 1} == {'a': 1} }}", {}),
    ("compare_error", "{{ 'a' < 1 }}", {}),
    ("logic_values", "{{ 1 and 2 }} {{ 0 and 2 }} {{ 0 or 'x' }} {{ '' or [] }} {{ not 0 }} {{ not 'a' }} {{ none or 'd' }}", {}),
    ("in_operator", "{{ 1 in [1, 2] }} {{ 'a' in 'cat' }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }} {{ 3 not in [1] }} {{ 1 in missing }}", {}),
    ("in_type_error", "{{ 1 in 'abc' }}", {}),
    ("inline_if", "{{ 'y' if true else 'n' }} {{ 'y' if 0 else 'n' }} [{{ 'y' if false }}] {{ 1 if false else 2 if true else 3 }}", {}),
    # Access.
    ("attribute_and_item", "{{ m.role }} {{ m['content'] }} {{ l[0] }} {{ l[-1] }} {{ l.1 }} {{ s[1] }} {{ s[-1] }}", {"m": {"role": "user", "content": "hi"}, "l": [10, 20, 30], "s": "héllo"}),
    ("missing_access", "[{{ l[5] }}][{{ m.x }}][{{ m['x'] }}][{{ none.x }}][{{ s.x }}][{{ 5.x }}]", {"l": [1], "m": {}, "s": "str"}),
    ("undefined_attr_error", "{{ missing.attr }}", {}),
    ("undefined_of_undefined_error", "{{ m.a.b }}", {"m": {}}),
    ("slices", "{{ l[1:] }} {{ l[:2] }} {{ l[::-1] }} {{ l[::2] }} {{ l[-2:] }} {{ l[5:] }} {{ s[::-1] }} {{ s[1:-1] }} {{ s[-10:10:2] }}", {"l": [1, 2, 3, 4], "s": "ünïcode"}),
    ("dict_methods", "{{ d.items()|list }}|{{ d.keys()|list }}|{{ d.values()|list }}|{{ d.get('a') }}|{{ d.get('z') }}|{{ d.get('z', 5) }}", {"d": {"a": 1, "b": [2]}}),
    ("dict_items_loop", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"b": 1, "a": 2, "c": {"x": 1}}}),
    ("dict_iteration_order", "{% for k in d %}{{ k }},{% endfor %}", {"d": {"zeta": 1, "alpha": 2, "mid": 3}}),
    ("string_methods", "{{ '  x y  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'b  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}", {}),
    ("string_methods_2", "{{ 'Hello'.startswith('He') }} {{ 'Hello'.endswith(('x', 'lo')) }} {{ 'abc'.upper() }} {{ 'ÀBC'.lower() }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'hello wORLD'.title() }} {{ 'hello World'.capitalize() }} {{ 'banana'.count('a') }} {{ 'banana'.find('n') }} {{ '-'.join(['a', 'b']) }}", {}),
    ("list_methods", "{{ l.index(20) }} {{ l.count(10) }}", {"l": [10, 20, 10]}),
    # Filters.
    ("filter_basic", "{{ '  pad  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'abc'|upper }}|{{ 'ABC'|lower }}|{{ 'hello wORLD-foo(bar'|title }}|{{ 'heLLo'|capitalize }}", {}),
    ("filter_length", "{{ 'héllo'|length }} {{ [1, 2]|length }} {{ {'a': 1}|length }} {{ missing|length }} {{ 'ab'|count }}", {}),
    ("filter_default", "{{ missing|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} {{ none|default('d') }} {{ 0|d('z', true) }} {{ 'v'|default('d') }}", {}),
    ("filter_join", "{{ [1, 2, 3]|join(', ') }} {{ ['a', 'b']|join }} {{ users|join(', ', attribute='name') }}", {"users": [{"name": "ann"}, {"name": "bob"}]}),
    ("filter_first_last", "{{ [1, 2]|first }} {{ [1, 2]|last }} {{ 'abc'|first }} [{{ []|first }}]", {}),
    ("filter_conversions", "{{ '42'|int }} {{ ' 7 '|int }} {{ '4.7'|int }} {{ 'x'|int }} {{ 'x'|int(-1) }} {{ 2.9|int }} {{ '2.5'|float }} {{ 2|float }} {{ 'x'|float }} {{ 3|string }} {{ [1, 'a']|string }}", {}),
    ("filter_list_items", "{{ 'abc'|list }} {{ {'a': 1, 'b': 2}|list }} {{ {'a': 1}|items|list }} {{ missing|list }}", {}),
    ("filter_replace_reverse", "{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 1) }} {{ 'abc'|reverse }} {{ [1, 2, 3]|reverse|list }}", {}),
    ("filter_sort_unique", "{{ [3, 1, 2]|sort }} {{ ['b', 'A', 'c']|sort }} {{ [3, 1]|sort(reverse=true) }} {{ users|sort(attribute='age')|map(attribute='name')|list }} {{ ['b', 'A', 'a', 'b']|unique|list }}", {"users": [{"name": "x", "age": 30}, {"name": "y", "age": 20}]}),
    ("filter_dictsort", "{{ {'b': 1, 'a': 2, 'C': 0}|dictsort }} {{ {'b': 1, 'a': 2}|dictsort(by='value') }} {{ {'b': 1, 'a': 2}|dictsort(reverse=true) }}", {}),
    ("filter_map_select", "{{ msgs|map(attribute='role')|list }} {{ ['a', 'b']|map('upper')|list }} {{ msgs|selectattr('role', 'equalto', 'user')|list|length }} {{ msgs|rejectattr('role', 'eq', 'user')|map(attribute='content')|join('/') }} {{ msgs|selectattr('tool')|list|length }}", {"msgs": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool": True}, {"role": "user", "content": "c"}]}),
    ("filter_select_reject", "{{ [1, 2, 3, 4]|select('even')|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [0, 1, '', 'a']|select|list }} {{ [1, 5, 9]|select('gt', 4)|list }}", {}),
    ("filter_math", "{{ -3|abs }} {{ 2.567|round(2) }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.1|round(0, 'ceil') }} {{ [3, 1, 2]|max }} {{ [3, 1, 2]|min }} {{ [1, 2, 3]|sum }} {{ users|sum(attribute='n') }}", {"users": [{"n": 1}, {"n": 4}]}),
    ("filter_tojson", "{{ d|tojson }}|{{ [1, 2.0, 'é\"<'] |tojson }}|{{ none|tojson }}|{{ 'x'|tojson }}|{{ true|tojson }}", {"d": {"b": 1, "a": [1, {"c": None}], "u": "ünï \u2028 \u0001"}}),
    ("filter_tojson_indent", "{{ d|tojson(indent=2) }}\n{{ d|tojson(indent=4, sort_keys=true) }}\n{{ [] |tojson(indent=2) }}{{ {} |tojson(indent=2) }}\n{{ d|tojson(separators=(',', ':')) }}", {"d": {"name": "f", "params": {"z": [1, 2], "a": {}}, "ok": False}}),
    ("filter_tojson_ensure_ascii", "{{ d|tojson(ensure_ascii=true) }}|{{ 'é'|tojson(true) }}", {"d": {"é": "ü😀\x7f\u2028"}}),
    ("filter_tojson_undefined_error", "{{ missing|tojson }}", {}),
    ("filter_safe_string", "{{ '<b>'|safe }} {{ 5|string ~ 'x' }}", {}),
    ("filter_indent", "[{{ 'a\\nb\\n\\nc'|indent(2) }}][{{ 'a\\nb'|indent(2, true) }}][{{ 'a\\n\\nb'|indent(width=3, blank=true) }}]", {}),
    ("filter_chain_precedence", "{{ -3|abs }} {{ 'a' ~ 'b'|upper }} {{ ('a' ~ 'b')|upper }} {{ [1, 2]|length + 1 }} {{ not [1]|length }}", {}),
    # Tests.
    ("tests_defined", "{{ x is defined }} {{ missing is defined }} {{ missing is undefined }} {{ none is none }} {{ 1 is not none }} {{ d.k is defined }} {{ d.z is defined }}", {"x": 1, "d": {"k": None}}),
    ("tests_types", "{{ 'a' is string }} {{ 1 is number }} {{ 1.5 is number }} {{ true is number }} {{ 1 is integer }} {{ 1.0 is float }} {{ {} is mapping }} {{ [] is mapping }} {{ [] is iterable }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ [] is sequence }} {{ missing is iterable }} {{ true is boolean }}", {}),
    ("tests_values", "{{ true is true }} {{ 1 is true }} {{ false is false }} {{ 2 is even }} {{ 3 is odd }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} {{ 3 is eq 3 }} {{ 3 is equalto(4) }} {{ 'A' is upper }} {{ 'a' is lower }} {{ 1 is in [1] }} {{ none is sameas none }}", {}),
    ("tests_callable", "{{ range is callable }} {{ 'x' is callable }} {{ 'x'.upper is callable }}", {}),
    # Loops.
    ("loop_vars", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", {}),
    ("loop_prev_next_cycle", "{% for x in [1, 2, 3] %}[{{ loop.previtem }}|{{ loop.nextitem }}|{{ loop.cycle('o', 'e') }}]{% endfor %}", {}),
    ("loop_filter", "{% for x in range(10) if x % 3 == 0 %}{{ x }}:{{ loop.index }}/{{ loop.length }} {% endfor %}", {}),
    ("loop_else", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in [1] if x > 5 %}x{% else %}none passed{% endfor %}", {}),
    ("loop_break_continue", "{% for i in range(10) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("loop_nested_depth", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.depth }}{{ loop.index }} {% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("loop_unpack", "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }} {% endfor %}{% for (k, v) in {'x': 1}|items %}{{ k }}{{ v }}{% endfor %}", {}),
    ("loop_scoping", "{% set x = 0 %}{% for i in [1, 2] %}{{ x }}{% set x = x + 10 %}{{ x }} {% endfor %}{{ x }}", {}),
    ("loop_over_undefined_and_dict", "[{% for x in missing %}x{% endfor %}]{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}", {}),
    ("loop_not_iterable_error", "{% for x in 5 %}{{ x }}{% endfor %}", {}),
    ("range_forms", "{{ range(3)|list }} {{ range(1, 4)|list }} {{ range(10, 0, -3)|list }} {{ range(0)|list }}", {}),
    # Set, namespace, if scoping.
    ("set_basic", "{% set a = 1 %}{% set b, c = 2, 3 %}{% set t = 1, 2 %}{{ a }}{{ b }}{{ c }}{{ t }}", {}),
    ("set_in_if_leaks", "{% if true %}{% set y = 5 %}{% endif %}{{ y }}{% for i in [1] %}{% set z = 1 %}{% endfor %}[{{ z }}]", {}),
    ("set_block", "{% set body %}Hello {{ name }}!{% endset %}{{ body|upper }}|{% set q | trim %}  padded  {% endset %}[{{ q }}]", {"name": "Ann"}),
    ("namespace", "{% set ns = namespace(count=0, found=false) %}{% for m in msgs %}{% if m.role == 'user' %}{% set ns.count = ns.count + 1 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.count }} {{ ns.found }} {{ ns }}", {"msgs": [{"role": "user"}, {"role": "assistant"}, {"role": "user"}]}),
    ("namespace_last_index", "{% set ns = namespace(last=-1) %}{% for m in msgs[::-1] %}{% set index = (msgs|length - 1) - loop.index0 %}{% if ns.last == -1 and m.role == 'user' %}{% set ns.last = index %}{% endif %}{% endfor %}{{ ns.last }}", {"msgs": [{"role": "user"}, {"role": "assistant"}, {"role": "user"}, {"role": "assistant"}]}),
    ("dict_global", "{{ dict(a=1, b='x') }} {% set d = dict(k=[1]) %}{{ d.k }}", {}),
    ("if_elif_else", "{% for v in [0, 1, 2, 3] %}{% if v == 0 %}zero{% elif v == 1 %}one{% elif v == 2 %}two{% else %}many{% endif %} {% endfor %}", {}),
    # Macros.
    ("macro_args", "{% macro f(a, b='q', c=none) %}[{{ a }}{{ b }}{{ c }}]{% endmacro %}{{ f(1) }}{{ f(1, 2) }}{{ f(b=3, a=4) }}{{ f(1, c=5) }}", {}),
    ("macro_varargs_kwargs", "{% macro g(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ g(1, 2, 3) }}|{{ g(1, x=2) }}", {}),
    ("macro_scope", "{% set outer = 'O' %}{% macro h() %}{% set outer = 'I' %}{{ outer }}{% endmacro %}{{ h() }}{{ outer }}", {}),
    ("macro_missing_arg", "{% macro f(a, b) %}[{{ a }}|{{ b }}]{% endmacro %}{{ f(1) }}", {}),
    ("macro_too_many_args_error", "{% macro f(a) %}{{ a }}{% endmacro %}{{ f(1, 2) }}", {}),
    ("macro_unknown_kwarg_error", "{% macro f(a) %}{{ a }}{% endmacro %}{{ f(b=1) }}", {}),
    ("macro_recursive_render", "{% macro render(c) %}{% if c is string %}{{ c }}{% else %}{% for p in c %}{{ render(p.text) }}{% endfor %}{% endif %}{% endmacro %}{{ render(content) }}", {"content": [{"text": "a"}, {"text": "b"}]}),
    # Whitespace control (trim_blocks / lstrip_blocks / - / +).
    ("ws_trim_lstrip", "  {% if true %}\n  x\n  {% endif %}\n  {{ 'y' }}\n{# comment #}\nz\n", {}),
    ("ws_minus", "a  {%- if true -%}  b  {%- endif -%}  c\n  {{- 'd' -}}  \n e", {}),
    ("ws_plus", "  {%+ if true %}x{% endif +%}\ny", {}),
    ("ws_comment_strip", "a\n  {#- c -#}\n  b", {}),
    ("ws_variable_no_lstrip", "  {{ 'v' }}\n  {% for i in [1, 2] %}\n    {{ i }}\n  {% endfor %}\nend", {}),
    ("ws_block_end_newlines", "{% for i in [1, 2] %}\n{{ i }}\n{% endfor %}\n\nafter", {}),
    ("ws_crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc\r\n", {}),
    ("ws_trailing_newline_kept_once", "text\n\n", {}),
    ("ws_dict_literal_in_output", "{{ {'a': {'b': 1}} }}", {}),
    ("raw_block", "{% raw %}{{ not rendered }} {% if %}{% endraw %}|{%- raw -%}  x  {%- endraw -%}  |", {}),
    ("filter_block", "{% filter upper %}abc {{ 'd' }}{% endfilter %}|{% filter trim|upper %}  x  {% endfilter %}", {}),
    ("with_block", "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", {}),
    ("generation_block", "{% for m in msgs %}{% generation %}{{ m }}{% endgeneration %}{% endfor %}", {"msgs": ["a", "b"]}),
    # Errors raised on purpose.
    ("raise_exception", "{{ raise_exception('Roles must alternate: ' ~ 3) }}", {}),
    ("call_not_callable", "{{ 5() }}", {}),
    ("call_undefined", "{{ nothing() }}", {}),
    ("namespace_underscore_error", "{% set ns = namespace() %}{% set ns._x = 1 %}", {}),
]


def snippet_cases():
    out = []
    for name, source, context in SNIPPETS:
        case = {"name": name, "template": source, "context": context}
        try:
            case["expected"] = _compile_jinja_template(source).render(**context)
        except Exception as e:  # noqa: BLE001
            case["error"] = f"{type(e).__name__}: {e}"
        out.append(case)
    return out


def main():
    goldens = {
        "generator": "scripts/reference/make_chat_goldens.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "templates": {name: {"bos_token": b, "eos_token": e} for name, (b, e) in TEMPLATES.items()},
        "cases": template_cases(),
        "snippets": snippet_cases(),
    }
    out = GOLDEN_DIR / "chat_goldens.json"
    out.write_text(json.dumps(goldens, ensure_ascii=False, indent=1) + "\n")
    n_err = sum("error" in c for c in goldens["cases"])
    s_err = sum("error" in c for c in goldens["snippets"])
    print(f"wrote {out}: {len(goldens['cases'])} template cases ({n_err} errors), "
          f"{len(goldens['snippets'])} snippets ({s_err} errors)")


if __name__ == "__main__":
    main()
