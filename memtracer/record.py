"""The trace format: NumPy's view of a GMBE record, mirroring qemu_patches/gmbe_record.h."""
import numpy as np

RECORD_SIZE = 16

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
