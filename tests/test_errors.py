"""errors.py: the one line an error is shown as, the one printer, and how an option is named."""

from __future__ import annotations

import inspect

from losslandscape import errors


def raise_bug():
    {}["missing"]  # noqa: B018 (a KeyError raised on this line)


def test_a_bug_is_one_line_naming_its_type_message_and_the_file_line_it_was_raised_at():
    try:
        raise_bug()
    except KeyError as exc:
        line = errors.one_line(exc)
    lineno = inspect.getsourcelines(raise_bug)[1] + 1
    assert line == f"KeyError: 'missing' (at test_errors.py:{lineno}; -v for the traceback)"
    assert errors.one_line(ValueError()) == "ValueError (no traceback; -v for the traceback)"
    assert errors.one_line(errors.UserError("grid.x: bad")) == "grid.x: bad"


def test_the_printer_writes_one_prefixed_line(capsys):
    errors.print_error("data.splits: empty\nsecond line")
    errors.print_error(errors.UserError("model.name: unknown"))
    assert capsys.readouterr().err.splitlines() == ["losslandscape: error: data.splits: empty second line",
                                                    "losslandscape: error: model.name: unknown"]


def test_an_option_is_named_by_its_keyword_unless_the_command_line_names_it_by_its_flag():
    assert errors.option("top_k") == "top_k" and errors.option_value("samples", 32) == "samples=32"
    with errors.named_as_flags({"top_k": "--top-k", "samples": "--samples"}):
        assert errors.option("top_k") == "--top-k" and errors.option_value("samples", 32) == "--samples 32"
        assert errors.option("split") == "split"  # not one of the verb's flags
    assert errors.option("top_k") == "top_k"


def test_the_exit_codes_are_the_documented_ones():
    assert (errors.EXIT_DONE, errors.EXIT_ERROR, errors.EXIT_STOPPED, errors.EXIT_MISSING,
            errors.EXIT_INTERRUPTED) == (0, 1, 3, 4, 130)
