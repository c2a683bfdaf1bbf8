/*
 * guest_channel.h - the framing between memory_tracer (host) and the guest
 * runner, on the serial port and on the virtio-serial port alike.
 *
 *   "MTR1"  type (1 byte)  length (4 bytes, LE)  payload  CRC32 (4 bytes, LE)
 *
 * The CRC (zlib's CRC-32) covers type, length and payload. A receiver scans for
 * the magic, so console noise between frames is skipped; a frame whose CRC
 * fails is answered with NAK and the sender sends it again.
 * memtracer/qemu/guest_channel.py is the host's side of the same format.
 */
#ifndef GUEST_CHANNEL_H
#define GUEST_CHANNEL_H

#define FRAME_MAGIC "MTR1"
#define FRAME_MAGIC_LEN 4
#define FRAME_HEADER_LEN 9            /* magic, type, length */
#define FRAME_TRAILER_LEN 4           /* CRC32 */
#define FRAME_MAX_PAYLOAD (256u << 20)

/* host -> guest */
#define FRAME_PING 'P'      /* payload echoed back in PONG */
#define FRAME_FILE 'F'      /* flags (1 byte: FILE_GZIP), then the workload's bytes */
#define FRAME_RUN 'R'       /* flags (1 byte: RUN_WRAP), then argv as NUL-terminated strings */
#define FRAME_STDIN 'I'     /* bytes for the workload's standard input */
#define FRAME_KILL 'K'      /* SIGKILL to the workload's process group */

/* guest -> host */
#define FRAME_PONG 'p'
#define FRAME_ACK 'A'       /* status (4 bytes, LE; 0 or an errno), then text */
#define FRAME_NAK 'N'       /* a frame arrived corrupted: send it again */
#define FRAME_OUTPUT 'O'    /* the workload's terminal output */
#define FRAME_EXIT 'X'      /* exit code (4 bytes, LE), then signal number (4 bytes, LE) */

#define FILE_GZIP 0x01
/* The runner plays the workload protocol itself: empty info, Ready, Enter, run, Stop tracing. */
#define RUN_WRAP 0x01

#endif
