"""The built-in model's recipe, one module per stage (text, tokenizer, lm, data), each runnable
with `python -m speech.builtin_recipe.<stage>`. Training runs on a developer's machine, never in
CI; outputs go under work/builtin/. See docs/builtin-model.md."""
