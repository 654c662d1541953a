"""What every kerasformer command line shares: `--version`, `--log-level`, help that shows
each flag's default, and `--flag/--no-flag` booleans.

    parser = command_line("kerasformer-evaluate", __doc__, progress=True)
    parser.add_argument("--beam-size", type=int, default=4, help="beam search's beam")
    args = parser.parse_args(argv)
    configure(args)    # logging and progress reports, once per command

Standard library only, so that the serving client can use it too (and
`export/session_check.py`, which must import nothing of ours, reads `package_version` here
for `--version` only).
(`kerasformer-serve` keeps tensorflow_model_server's own flag syntax, export/serving/model_config.py.)
"""

import argparse
import logging
import sys

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def package_version():
    """kerasformer's version: `kerasformer.__version__`, the one place it is written
    (pyproject.toml reads it from there when the package is built)."""
    from kerasformer import __version__

    return __version__


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help with each flag's default, "(default: 4)", and the description as written.

    A flag whose help already says its default (one without a value, `default=None`, has to
    say what that means: "default: the next free version") is left as it is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)

    def _format_action_invocation(self, action):
        if isinstance(action, BooleanFlag):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)

    def _format_args(self, action, default_metavar):
        if isinstance(action, BooleanFlag):  # the usage line: [--jit-compile]; its help names both
            return ""
        return super()._format_args(action, default_metavar)


def parse_bool(text):
    words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(words)}")
    return words[text.lower()]


def seconds(text):
    value = float(text)  # argparse reports a ValueError as "invalid seconds value"
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


class BooleanFlag(argparse.Action):
    """`--jit-compile` sets True, `--no-jit-compile` False (argparse.BooleanOptionalAction's
    spelling). The older `--jit-compile true|false|yes|no|1|0` is still read, with a
    deprecation note on stderr, so existing scripts keep working.

    The value is optional, so a positional argument right after the flag would be taken as
    its value: only commands without positional arguments use it (kerasformer-train).
    """

    def __init__(self, option_strings, dest, default=None, required=False, help=None):
        names = []
        for name in option_strings:
            names.append(name)
            if name.startswith("--"):
                names.append("--no-" + name[2:])
        super().__init__(names, dest, nargs="?", default=default, type=parse_bool, required=required, help=help)

    def __call__(self, parser, namespace, value, option_string=None):
        negative = option_string.startswith("--no-")
        if value is None:
            setattr(namespace, self.dest, not negative)
            return
        if negative:
            raise argparse.ArgumentError(self, f"{option_string} takes no value (got {value!r})")
        print(f"{parser.prog}: warning: '{option_string} {str(value).lower()}' is deprecated; write "
              f"{option_string if value else '--no-' + option_string[2:]}", file=sys.stderr)
        setattr(namespace, self.dest, value)


class ProgramOrModelVersion(argparse.Action):
    """`--version` alone prints the program's version and exits, as on every other command;
    `--version N`, the older spelling of `--model-version N` (a TensorFlow Serving model
    version), still sets it, with a deprecation note on stderr."""

    def __init__(self, option_strings, dest, model_dest="model_version", help=None):
        self.model_dest = model_dest
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", type=int, metavar="N",
                         default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, value, option_string=None):
        if value is None:
            print(f"{parser.prog} {package_version()}")
            parser.exit()
        option = "--" + self.model_dest.replace("_", "-")
        print(f"{parser.prog}: warning: '--version {value}' is deprecated; write '{option} {value}'", file=sys.stderr)
        setattr(namespace, self.model_dest, value)


def command_line(prog, description, progress=False, model_version=False):
    """An ArgumentParser with the shared flags: `--version`, `--log-level`, and with
    `progress`, `--progress-seconds`. With `model_version`, `--version N` also sets
    `args.model_version` (`ProgramOrModelVersion`); the command adds `--model-version` itself."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    if model_version:
        parser.add_argument("--version", action=ProgramOrModelVersion,
                            help="print the program's version and exit ('--version N': the older spelling "
                                 "of --model-version N)")
    else:
        parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                            help="print the program's version and exit")
    parser.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS,
                        help="least severe of kerasformer's log messages shown" +
                             (" (progress reports are info)" if progress else ""))
    if progress:
        parser.add_argument("--progress-seconds", type=seconds, default=30.0, metavar="SECONDS",
                            help="when the output is not a terminal (a log file, a pipe), one progress "
                                 "line this often; on a terminal a progress bar")
    return parser


def configure(args):
    """Logging to stderr, and the progress reports' interval: called once by each command's
    `main`, after its flags are read.

    `--log-level` is the level of kerasformer's own loggers (`kerasformer.*`); other libraries'
    (absl, tensorflow) show from WARNING up whatever it is, since their INFO is pages of detail
    about graph tracing."""
    level = logging.getLevelName(args.log_level.upper())
    logging.basicConfig(level=max(level, logging.WARNING), format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    # basicConfig leaves an already configured root logger alone (pytest's, an embedding
    # program's); the level asked for still applies to this package's loggers.
    logging.getLogger("kerasformer").setLevel(level)
    if getattr(args, "progress_seconds", None) is not None:
        from kerasformer.training import progress

        progress.report_every(args.progress_seconds)
