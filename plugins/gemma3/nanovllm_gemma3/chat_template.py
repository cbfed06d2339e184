"""Gemma's turn format, for checkpoints that carry no template (llama.cpp's GGUF files of the base models).

Each turn is ``<start_of_turn>ROLE\\n...<end_of_turn>\\n`` with ROLE ``user`` or
``model``. Gemma has no system role: a system message is written at the top of
the first user turn, as Google's template does. Other roles (tool results) are
written as user turns. Text parts of list contents are joined; other parts are dropped.
"""

GEMMA_CHAT_TEMPLATE = """\
{%- macro text(content) -%}
{%- if content is string -%}{{ content | trim }}
{%- elif content -%}{%- for part in content if part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{{- bos_token -}}
{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none -%}
{%- for message in messages if message['role'] != 'system' -%}
{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' -}}
{%- if loop.first and system is not none -%}{{ text(system) + '\\n\\n' }}{%- endif -%}
{{- text(message['content']) + '<end_of_turn>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}
"""
