"""The trace format: NumPy's view of a GMBE record, mirroring qemu_patches/gmbe_record.h."""
import numpy as np

RECORD_SIZE = 16
# memory_tracer --record_format: the record layouts of qemu_patches/gmbe_record.h, by record size.
RECORD_FORMATS = {"standard": 16, "extended": 32, "compact": 8}

SIZE_SHIFT_MASK = 0x07
SIGN_EXTEND_BIT = 0x08
BIG_ENDIAN_BIT = 0x10
STORE_BIT = 0x20
CPL_SHIFT = 6
VALID_BYTE = 0x80

# One record: byte 0 the info byte, bytes 1-2 the vCPU index, 3-6 zero,
# byte 7 the original's 0x80 "valid" byte, bytes 8-15 the guest virtual address.
RECORD_DTYPE = np.dtype([
    ("info", "u1"),
    ("vcpu", "<u2"),
    ("reserved", "u1", (4,)),
    ("valid", "u1"),
    ("virt_addr", "<u8"),
])
assert RECORD_DTYPE.itemsize == RECORD_SIZE


def records_from_bytes(data):
    """The whole records in data (bytes-like), as a structured array (no copy)."""
    usable = len(data) - len(data) % RECORD_SIZE
    return np.frombuffer(memoryview(data)[:usable], dtype=RECORD_DTYPE)


def access_sizes(records):
    return np.left_shift(1, records["info"] & SIZE_SHIFT_MASK)


def is_store(records):
    return (records["info"] & STORE_BIT) != 0


def is_sign_extended(records):
    return (records["info"] & SIGN_EXTEND_BIT) != 0


def is_big_endian(records):
    return (records["info"] & BIG_ENDIAN_BIT) != 0


def cpls(records):
    return records["info"] >> CPL_SHIFT


# ---------------------------------------------------------------- markers and other formats

MARKER_INFO = 0x07          # size shift 7: no access is 128 bytes (gmbe_record.h)
MARKER_KINDS = {1: "region_begin", 2: "region_end", 3: "marker", 4: "instruction_limit"}

# --record_format extended: the 16 bytes above, then the physical address and the PC.
EXTENDED_DTYPE = np.dtype(RECORD_DTYPE.descr + [("phys_addr", "<u8"), ("pc", "<u8")])
assert EXTENDED_DTYPE.itemsize == 32
# --record_format compact: one word (address bits 0-47, info byte 48-55, vCPU 56-63).
COMPACT_DTYPE = np.dtype("<u8")

DTYPE_BY_RECORD_SIZE = {16: RECORD_DTYPE, 32: EXTENDED_DTYPE, 8: COMPACT_DTYPE}


def is_marker(records):
    return (records["info"] & SIZE_SHIFT_MASK) == MARKER_INFO


def marker_kinds(markers):
    return markers["reserved"][:, 0]


def widen_compact(words):
    """Compact records as 16-byte records (markers included, in the 16-byte marker layout)."""
    words = np.asarray(words, dtype=COMPACT_DTYPE)
    records = np.zeros(len(words), dtype=RECORD_DTYPE)
    info = ((words >> np.uint64(48)) & np.uint64(0xFF)).astype(np.uint8)
    records["info"] = info
    records["vcpu"] = (words >> np.uint64(56)).astype(np.uint16)
    address = (words << np.uint64(16)).view(np.int64) >> np.int64(16)   # sign-extend bit 47
    records["virt_addr"] = address.view(np.uint64)
    markers = (info & SIZE_SHIFT_MASK) == MARKER_INFO
    records["valid"] = np.where(markers, 0, VALID_BYTE)
    if markers.any():
        records["reserved"][markers, 0] = ((words[markers] >> np.uint64(40)) & np.uint64(0xFF)).astype(np.uint8)
        records["virt_addr"][markers] = words[markers] & np.uint64((1 << 40) - 1)
    return records


def as_records(raw):
    """A batch in any format as records with the fields of RECORD_DTYPE (extended keeps its extra fields)."""
    return widen_compact(raw) if raw.dtype == COMPACT_DTYPE else raw


def narrow_extended(records):
    """Extended records as 16-byte records (a copy: their first 16 bytes)."""
    raw = np.ascontiguousarray(records).view(np.uint8).reshape(-1, EXTENDED_DTYPE.itemsize)
    return np.ascontiguousarray(raw[:, :RECORD_SIZE]).view(RECORD_DTYPE).reshape(-1)
