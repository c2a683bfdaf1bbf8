"""A campaign file (TOML) read into the runs it asks for. Every run's memory_tracer command line
is checked by memory_tracer's own validation before any run starts; a bad value is one line
naming it and the line of the campaign file it is on.

    repetitions = 1                    # each run this many times (optional)
    keep_traces = "traces"             # optional: keep each run's trace file in this folder

    [machine]                          # full-system runs: memory_tracer's positional arguments
    guest_image = "../build/guest_image/memory_tracer_guest.qcow2"
    snapshot = "ready_for_memory_tracer"
    qemu = "../build/qemu_with_GMBEOO"

    [[workload]]                       # one table per workload
    name = "mem_loop"
    path_on_host = "../build/guest_programs/mem_loop"    # or path_on_guest = "/bin/busybox"
    args = "1024 1"
    # files = "dir"                    # sent with --ssh_key as ~/workload (--workload_files)
    # follows_protocol = true          # --dont_add_communications_with_host_to_workload

    [options]                          # memory_tracer options of every run
    trace_only_CPL3_code_GMBE = true

    [matrix]                           # every combination of these is a configuration
    user_mode = [true, false]
    log_of_GMBE_tracing_ratio = [0, 4]

    [[analysis]]                       # one or more; several share one trace (recorded once)
    tool = "../build/analysis_tools/count"
    args = ""

Relative paths are relative to the campaign file's folder."""
import hashlib
import itertools
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace

from ..cli import build_parser, validate
from ..errors import BadInputError
from ..layout import DEFAULT_GUEST_IMAGE, DEFAULT_QEMU_DIR, DEFAULT_SNAPSHOT

# The keys each table may have: anything else is a mistake worth one line.
TOP_LEVEL_KEYS = {"repetitions", "keep_traces", "machine", "workload", "options", "matrix", "analysis"}
WORKLOAD_KEYS = {"name", "path_on_host", "path_on_guest", "args", "files", "follows_protocol"}
ANALYSIS_KEYS = {"name", "tool", "args"}
MACHINE_KEYS = {"guest_image", "snapshot", "qemu"}
# memory_tracer options a campaign sets itself (from [[workload]], [[analysis]] and [machine]),
# or that make no sense without a terminal or a person at it.
CAMPAIGN_SETS = {
    "workload_path_on_host": "it is path_on_host of a [[workload]]",
    "workload_path_on_guest": "it is path_on_guest of a [[workload]]",
    "workload_args": "it is args of a [[workload]]", "workload_files": "it is files of a [[workload]]",
    "dont_add_communications_with_host_to_workload": "it is follows_protocol of a [[workload]]",
    "analysis_tool_path": "it is tool of an [[analysis]]", "analysis_tool_args": "it is args of an [[analysis]]",
    "guest_image_path": "it is guest_image of [machine]", "snapshot_name": "it is snapshot of [machine]",
    "qemu_with_GMBEOO_path": "it is qemu of [machine]",
    "strict_exit_status": "the campaign always sets it (a failed workload is a failed run)",
    "run_on_private_copy": "the campaign always sets it in full-system runs (runs never share an image)",
    "trace_fifo_path": "a campaign's runs go to its [[analysis]] tools",
    "trace_files_per_vcpu": "a campaign's runs go to its [[analysis]] tools",
    "dont_trace": "a campaign's runs go to its [[analysis]] tools",
    "dont_exit_qemu_when_done": "a campaign runs unattended", "dont_use_nographic": "a campaign runs unattended",
    "verbose": "the results keep each run's error line",
}
# memory_tracer's messages name its flags; a campaign file names them so.
CAMPAIGN_NAME_OF_FLAG = {
    "workload_path_on_host": ("workload", "path_on_host"), "workload_path_on_guest": ("workload", "path_on_guest"),
    "workload_args": ("workload", "args"), "workload_files": ("workload", "files"),
    "analysis_tool_path": ("analysis", "tool"), "analysis_tool_args": ("analysis", "args"),
    "guest_image_path": ("machine", "guest_image"), "qemu_with_GMBEOO_path": ("machine", "qemu"),
    "snapshot_name": ("machine", "snapshot"),
}


@dataclass(frozen=True)
class Workload:
    name: str
    path_on_host: str = None
    path_on_guest: str = None
    args: str = ""
    files: str = None
    follows_protocol: bool = False

    @property
    def path(self):
        return self.path_on_host or self.path_on_guest


@dataclass(frozen=True)
class Analysis:
    name: str
    tool: str
    args: str = ""


@dataclass(frozen=True)
class Run:
    """One memory_tracer run of a campaign: a workload, a configuration, a repetition."""
    workload: Workload
    options: tuple                      # ((option, value), ...): [options] and this configuration
    analyses: tuple
    repetition: int
    machine: tuple = None               # (guest_image, snapshot, qemu) for full-system runs
    trace_dir: str = None               # where to keep its trace file
    key: str = field(default="", compare=False)

    @property
    def on_host(self):
        """User mode or native: no guest image, so no positional arguments."""
        options = dict(self.options)
        return bool(options.get("user_mode") or options.get("dont_use_qemu"))

    @property
    def recorded(self):
        """Whether the run records a trace file that the analyses then read (several analyses, or
        kept traces), instead of handing the trace to its one analysis tool."""
        return len(self.analyses) > 1 or self.trace_dir is not None

    def parameters(self):
        """The run's columns in the results table."""
        return {"run_key": self.key, "workload": self.workload.name, "workload_path": self.workload.path,
                "workload_args": self.workload.args, "repetition": self.repetition, **dict(self.options)}

    def memory_tracer_arguments(self, tool, tool_args):
        """memory_tracer.py's command line (without the script) for this run, with this analysis tool."""
        argv = [] if self.on_host else list(self.machine)
        w = self.workload
        if w.path_on_host is not None:
            argv += ["--workload_path_on_host", w.path_on_host]
        else:
            argv += ["--workload_path_on_guest", w.path_on_guest]
        if w.args:
            argv += ["--workload_args", w.args]
        if w.files is not None:
            argv += ["--workload_files", w.files]
        if w.follows_protocol:
            argv.append("--dont_add_communications_with_host_to_workload")
        argv += ["--analysis_tool_path", tool]
        if tool_args:
            argv += ["--analysis_tool_args", tool_args]
        argv += ["--strict_exit_status", "--print_trace_info"]
        if not self.on_host:
            argv.append("--run_on_private_copy")     # runs at once never share an image
        for option, value in self.options:
            if value is True:
                argv.append(f"--{option}")
            elif value is not False:
                argv += [f"--{option}", str(value)]
        return argv


@dataclass
class Campaign:
    path: str
    runs: list


class CampaignFileLines:
    """Where a key is in the campaign file, for messages: TOML parsers keep no line numbers."""
    HEADER = re.compile(r"^\s*\[(\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text):
        self.lines = text.splitlines()

    def line_of(self, table=None, index=0, key=None):
        """The line of `key` in the index-th [table] (or [[table]]); the table's header without a
        key or when the key is not found; keys before any header with table=None."""
        current, seen, header_line = None, {}, None
        for number, line in enumerate(self.lines, 1):
            match = self.HEADER.match(line)
            if match:
                current = match.group(2)
                seen[current] = seen.get(current, -1) + 1
                if current == table and seen[current] == index:
                    header_line = number
                    if key is None:
                        return number
                continue
            here = current == table and (table is None or seen.get(current) == index)
            if here and key is not None and re.match(rf"^\s*{re.escape(key)}\s*=", line):
                return number
        return header_line or 1


def read_campaign(path):
    """The campaign file at path as its runs, each checked; BadInputError names what is wrong."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise BadInputError(f"the campaign file {path} cannot be read: {exc.strerror}.") from None
    text = raw.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{path}: not valid TOML: {exc}.") from None
    return CampaignReader(path, data, CampaignFileLines(text)).campaign()


class CampaignReader:
    def __init__(self, path, data, lines):
        self.path = path
        self.data = data
        self.lines = lines
        self.folder = os.path.dirname(os.path.abspath(path))
        self.option_kinds = {action.dest: action for action in build_parser()._actions}

    def fail(self, message, table=None, index=0, key=None):
        raise BadInputError(f"{self.path}, line {self.lines.line_of(table, index, key)}: {message}")

    def campaign(self):
        for key in self.data:
            if key not in TOP_LEVEL_KEYS:
                self.fail(f"unknown key {key!r} (expected one of {', '.join(sorted(TOP_LEVEL_KEYS))}).",
                          key=key)
        workloads = self.workloads()
        analyses = self.analyses()
        options = self.options("options", lambda value, option: [value])
        matrix = self.options("matrix", self.matrix_values)
        machine = self.machine()
        repetitions = self.data.get("repetitions", 1)
        if not isinstance(repetitions, int) or isinstance(repetitions, bool) or repetitions < 1:
            self.fail(f"repetitions must be a positive whole number, but {repetitions!r} isn't.", key="repetitions")
        trace_dir = self.trace_dir()
        runs = []
        names = list(options) + list(matrix)
        for index, workload in enumerate(workloads):
            for values in itertools.product(*options.values(), *matrix.values()):
                configuration = tuple(zip(names, values))
                for repetition in range(repetitions):
                    run = Run(workload, configuration, tuple(analyses), repetition, machine, trace_dir)
                    self.check(run, index, configuration)
                    runs.append(_with_key(run))
        return Campaign(self.path, runs)

    def path_value(self, value):
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(self.folder, value))

    def tables(self, name, allowed):
        tables = self.data.get(name, [])
        if isinstance(tables, dict):
            tables = [tables]
        if not isinstance(tables, list) or not tables:
            self.fail(f"the campaign needs at least one [[{name}]] table.", key=name)
        for index, table in enumerate(tables):
            for key in table:
                if key not in allowed:
                    self.fail(f"unknown key {key!r} in [[{name}]] (expected one of {', '.join(sorted(allowed))}).",
                              name, index, key)
        return tables

    def workloads(self):
        workloads = []
        for index, table in enumerate(self.tables("workload", WORKLOAD_KEYS)):
            places = [key for key in ("path_on_host", "path_on_guest") if key in table]
            if len(places) != 1:
                self.fail("a [[workload]] needs exactly one of path_on_host and path_on_guest.", "workload", index)
            for key in ("name", "path_on_host", "path_on_guest", "args", "files"):
                if key in table and not isinstance(table[key], str):
                    self.fail(f"{key} must be a string, but {table[key]!r} isn't.", "workload", index, key)
            if not isinstance(table.get("follows_protocol", False), bool):
                self.fail(f"follows_protocol must be true or false, but {table['follows_protocol']!r} isn't.",
                          "workload", index, "follows_protocol")
            host = table.get("path_on_host")
            workloads.append(Workload(
                name=table.get("name") or os.path.basename(table[places[0]]),
                path_on_host=host and self.path_value(host), path_on_guest=table.get("path_on_guest"),
                args=table.get("args", ""), files=table.get("files") and self.path_value(table["files"]),
                follows_protocol=table.get("follows_protocol", False)))
        names = [w.name for w in workloads]
        for index, name in enumerate(names):
            if names.index(name) != index:
                self.fail(f"two workloads are named {name!r}; give them a name each.", "workload", index)
        return workloads

    def analyses(self):
        analyses = []
        for index, table in enumerate(self.tables("analysis", ANALYSIS_KEYS)):
            if not isinstance(table.get("tool"), str):
                self.fail("an [[analysis]] needs tool = \"PATH\".", "analysis", index, "tool")
            tool = self.path_value(table["tool"])
            name = table.get("name") or os.path.splitext(os.path.basename(tool))[0]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                self.fail(f"an analysis name must be a word (letters, digits, _), as it prefixes the results' "
                          f"columns, but {name!r} isn't.", "analysis", index, "name")
            analyses.append(Analysis(name, tool, table.get("args", "")))
        names = [a.name for a in analyses]
        for index, name in enumerate(names):
            if names.index(name) != index:
                self.fail(f"two analyses are named {name!r}; give them a name each.", "analysis", index)
        return analyses

    def matrix_values(self, value, option):
        if not isinstance(value, list) or not value:
            self.fail(f"matrix.{option} must be a list of the values to try, but {value!r} isn't.",
                      "matrix", 0, option)
        return value

    def options(self, table, values_of):
        options = {}
        for option, value in self.data.get(table, {}).items():
            if option in CAMPAIGN_SETS:
                self.fail(f"{option} is not a campaign option: {CAMPAIGN_SETS[option]}.",
                          table, 0, option)
            action = self.option_kinds.get(option)
            if action is None or not action.option_strings:
                self.fail(f"unknown memory_tracer option {option!r} (see `python3 memory_tracer.py --help`).",
                          table, 0, option)
            values = values_of(value, option)
            flag = action.nargs == 0
            for one in values:
                if flag != isinstance(one, bool) or isinstance(one, (list, dict)):
                    expected = "true or false" if flag else "a value (a string or a number)"
                    self.fail(f"{option} takes {expected}, but {one!r} isn't.", table, 0, option)
            options[option] = values
        return options

    def machine(self):
        table = self.data.get("machine", {})
        for key in table:
            if key not in MACHINE_KEYS:
                self.fail(f"unknown key {key!r} in [machine] (expected one of {', '.join(sorted(MACHINE_KEYS))}).",
                          "machine", 0, key)
        for key, value in table.items():
            if not isinstance(value, str):
                self.fail(f"{key} must be a string, but {value!r} isn't.", "machine", 0, key)
        return (self.path_value(table["guest_image"]) if "guest_image" in table else str(DEFAULT_GUEST_IMAGE),
                table.get("snapshot", DEFAULT_SNAPSHOT),
                self.path_value(table["qemu"]) if "qemu" in table else str(DEFAULT_QEMU_DIR))

    def trace_dir(self):
        folder = self.data.get("keep_traces")
        if folder is None:
            return None
        if not isinstance(folder, str):
            self.fail(f"keep_traces must be a folder's path, but {folder!r} isn't.", key="keep_traces")
        return self.path_value(folder)

    def check(self, run, workload_index, configuration):
        """memory_tracer's own validation of the run's command line, for each of its analyses."""
        parser = build_parser()

        def refuse(message):
            raise BadInputError(message)
        parser.error = refuse
        for analysis_index, analysis in enumerate(run.analyses):
            argv = run.memory_tracer_arguments(analysis.tool, analysis.args)
            try:
                validate(parser, parser.parse_args(argv))
            except BadInputError as exc:
                self.fail_where_named(str(exc), workload_index, analysis_index, configuration)

    def fail_where_named(self, message, workload_index, analysis_index, configuration):
        """memory_tracer's message, at the line of the first campaign key it names."""
        message = message.rstrip(".") + "."
        for flag, (table, key) in CAMPAIGN_NAME_OF_FLAG.items():
            if re.search(rf"\b{flag}\b", message):
                index = {"workload": workload_index, "analysis": analysis_index}.get(table, 0)
                self.fail(message.replace(flag, key), table, index, key)
        for option, _ in configuration:
            if re.search(rf"\b{option}\b", message):
                table = "matrix" if option in self.data.get("matrix", {}) else "options"
                self.fail(message, table, 0, option)
        self.fail(message, "workload", workload_index)


def _with_key(run):
    """The run with its key: a digest of everything that makes it what it is, so that a campaign
    run again finds the runs it already finished, and a changed campaign does not."""
    identity = json.dumps({"workload": asdict(run.workload), "options": list(run.options),
                           "analyses": [asdict(a) for a in run.analyses], "repetition": run.repetition,
                           "machine": run.machine, "trace_dir": run.trace_dir}, sort_keys=True)
    return replace(run, key=hashlib.sha256(identity.encode()).hexdigest()[:16])
