"""The one kind of error a command answers with a single line instead of a traceback.

Bad input (a dataset, a checkpoint, a .bin, a pairs list, an IJB layout, an argument) or a run that cannot go
on raises a subclass of UserError whose message names the file or setting and the problem; `partial-fc`
prints it as `partial-fc: error: MESSAGE` and exits with EXIT_STATUS (ConfigError, a bad setting: 2;
everything else: 1). Each subclass also derives from the builtin error it refines (ValueError,
RuntimeError), so callers that catch those keep working.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix, reported as one line. Subclasses set EXIT_STATUS."""
    EXIT_STATUS = 1
