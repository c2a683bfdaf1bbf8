"""Standard output of a run: only the original memory_tracer.py's sections, in its order, each when it applies."""

WORKLOAD_INFO, ANALYSIS_OUTPUT, TRACE_FILES, TRACE_INFO = ("workload info:", "analysis output:", "trace files:",
                                                        "trace info:")
DURATION = "tracing_duration_in_milliseconds"
ATTENTION_COUNTERS = ("num_of_events_waiting_in_trace_buf", "num_of_missing_events", "num_of_dropped_events")


def trace_info_lines(counters):
    events = counters["num_of_GMBE_events_since_enabling_GMBEOO"]
    written = counters["num_of_events_written_to_trace_buf"]
    lines = [f"num_of_GMBE_events_since_enabling_GMBEOO: {events}",
             f"num_of_events_written_to_trace_buf: {written}"]
    if written:
        lines.append("actual_tracing_ratio (i.e. num_of_GMBE_events_since_enabling_GMBEOO / "
                     f"num_of_events_written_to_trace_buf): {events // written}")
    derived = dict(counters)
    derived["num_of_missing_events"] = (written - counters["num_of_events_written_to_trace_file"]
                                        - counters["num_of_events_waiting_in_trace_buf"])
    for name in ATTENTION_COUNTERS:
        if derived[name]:
            lines.append(f"ATTENTION: {name}: {derived[name]}")
    if counters.get("num_of_markers"):
        lines.append(f"num_of_markers: {counters['num_of_markers']}")
    if counters.get("instruction_limit_reached"):
        lines.append("instruction_limit_reached: yes")
    return lines


def format_report(result, print_trace_info):
    sections = []
    if result.workload_info:
        sections += [WORKLOAD_INFO, result.workload_info]
    sections.append(f"{DURATION}: {result.duration_ms}")
    if result.analysis_output is not None:
        sections += [ANALYSIS_OUTPUT, result.analysis_output]
    if result.trace_files is not None:
        sections += [TRACE_FILES, *(f"{path}: {records} records" for path, records in result.trace_files)]
    if print_trace_info and result.counters is not None:
        sections += [TRACE_INFO, *trace_info_lines(result.counters)]
    return "\n".join(sections) + "\n"


def parse_report(text):
    """format_report's output read back: {section header: [its lines]}, the duration under DURATION."""
    sections, current = {}, None
    for line in text.splitlines():
        if line in (WORKLOAD_INFO, ANALYSIS_OUTPUT, TRACE_FILES, TRACE_INFO):
            current = sections.setdefault(line, [])
        elif line.startswith(DURATION + ": "):
            sections[DURATION] = int(line.partition(": ")[2])
            current = None      # the duration line ends the workload info
        elif current is not None:
            current.append(line)
    return sections
