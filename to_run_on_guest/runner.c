/*
 * runner - memory_tracer's agent in the guest. It waits for frames
 * (guest_channel.h) on /dev/ttyS0 and, when the image has one, on the
 * virtio-serial port named org.memory_tracer.0, and answers each on the port it
 * came from: it stores a workload, runs it on a pseudo-terminal (so its stdio is
 * line-buffered, as on the original's serial console), relays its output and
 * input, and reports its exit code or the signal that killed it.
 *
 * It prints nothing by itself: after loadvm the host pings until it answers.
 * Built static (with zlib, for gzip-compressed workloads), so it runs in any
 * x86_64 Linux guest.
 * Usage: runner [WORK_DIRECTORY (default /tmp) [PORT...]]: PORTs replace the
 * serial and virtio ports (at most two; the tests use a pseudo-terminal).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "guest_channel.h"

#define SERIAL_PATH "/dev/ttyS0"
#define VIRTIO_PORT_NAME "org.memory_tracer.0"
#define OUTPUT_CHUNK 4096
#define PARTIAL_FRAME_PATIENCE_MS 1000

typedef struct {
    const char *name;
    int fd;
    uint8_t *buf;          /* bytes received, not yet parsed */
    size_t len, cap;
    bool hung_up;          /* virtio-serial: no host connected right now */
    long long last_data_ms;
} Channel;

static Channel channels[2];
static int num_channels;
static const char *work_dir = "/tmp";
static char workload_path[256];

/* The workload being run, if any. */
static Channel *session;           /* where its output and exit go */
static pid_t child = -1;
static int pty_master = -1;
static bool pty_hung_up;            /* every holder of the terminal closed it */
static bool wrap;                   /* RUN_WRAP: we play the protocol */
static bool waiting_for_enter;      /* RUN_WRAP: spawned only after Enter */
static char **pending_argv;

/* ------------------------------------------------------------ frames out */

static void write_all(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = { .fd = fd, .events = POLLOUT };
            poll(&pfd, 1, 100);
            continue;
        }
        if (n <= 0) {
            return;   /* the host went away; it will ping again */
        }
        p += n;
        len -= (size_t)n;
    }
}

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}

static uint32_t get_le32(const uint8_t *p)
{
    return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static void send_frame2(Channel *c, uint8_t type, const void *a, size_t alen,
                        const void *b, size_t blen)
{
    uint8_t header[FRAME_HEADER_LEN], trailer[FRAME_TRAILER_LEN];
    memcpy(header, FRAME_MAGIC, FRAME_MAGIC_LEN);
    header[4] = type;
    put_le32(header + 5, (uint32_t)(alen + blen));
    /* Not crc32(crc, NULL, 0): zlib answers that with the initial value. */
    uLong crc = crc32(0, header + 4, 5);
    if (alen) {
        crc = crc32(crc, a, (uInt)alen);
    }
    if (blen) {
        crc = crc32(crc, b, (uInt)blen);
    }
    put_le32(trailer, (uint32_t)crc);
    write_all(c->fd, header, sizeof header);
    write_all(c->fd, a, alen);
    write_all(c->fd, b, blen);
    write_all(c->fd, trailer, sizeof trailer);
}

static void send_frame(Channel *c, uint8_t type, const void *data, size_t len)
{
    send_frame2(c, type, data, len, NULL, 0);
}

static void send_ack(Channel *c, int status, const char *text)
{
    uint8_t st[4];
    put_le32(st, (uint32_t)status);
    send_frame2(c, FRAME_ACK, st, 4, text, strlen(text));
}

static void send_output(const char *text)
{
    send_frame(session, FRAME_OUTPUT, text, strlen(text));
}

/* ------------------------------------------------------------ the workload */

static bool store_workload(const uint8_t *data, size_t len, bool gzipped, char *error, size_t esize)
{
    snprintf(workload_path, sizeof workload_path, "%s/workload", work_dir);
    unlink(workload_path);   /* it may still be running from an earlier session: never write into it */
    int fd = open(workload_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
    if (fd < 0) {
        snprintf(error, esize, "cannot create %s: %s", workload_path, strerror(errno));
        return false;
    }
    bool ok = true;
    if (!gzipped) {
        write_all(fd, data, len);
    } else {
        z_stream zs = { .next_in = (Bytef *)data, .avail_in = (uInt)len };
        uint8_t out[65536];
        int rc = inflateInit2(&zs, 16 + MAX_WBITS);
        while (rc == Z_OK) {
            zs.next_out = out;
            zs.avail_out = sizeof out;
            rc = inflate(&zs, Z_NO_FLUSH);
            write_all(fd, out, sizeof out - zs.avail_out);
        }
        inflateEnd(&zs);
        if (rc != Z_STREAM_END) {
            snprintf(error, esize, "the workload's gzip data is corrupt (zlib error %d)", rc);
            ok = false;
        }
    }
    if (close(fd) != 0 && ok) {
        snprintf(error, esize, "cannot write %s: %s", workload_path, strerror(errno));
        ok = false;
    }
    return ok;
}

static void free_argv(char **argv)
{
    for (char **a = argv; a && *a; a++) {
        free(*a);
    }
    free(argv);
}

/* argv from NUL-terminated strings; NULL if there is none. */
static char **parse_argv(const uint8_t *p, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        n += p[i] == 0;
    }
    if (n == 0 || p[len - 1] != 0) {
        return NULL;
    }
    char **argv = calloc(n + 1, sizeof *argv);
    for (size_t i = 0, k = 0; k < n; k++) {
        argv[k] = strdup((const char *)p + i);
        i += strlen(argv[k]) + 1;
    }
    return argv;
}

/* The workload's terminal: no echo (our Enter is not output) and no \n -> \r\n. */
static int open_pty(char *slave_name, size_t size)
{
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) || unlockpt(master) || ptsname_r(master, slave_name, size)) {
        if (master >= 0) {
            close(master);
        }
        return -1;
    }
    return master;
}

static void exec_in_child(const char *slave_name, char **argv, int error_pipe)
{
    setsid();
    int slave = open(slave_name, O_RDWR);
    if (slave < 0) {
        _exit(127);
    }
    ioctl(slave, TIOCSCTTY, 0);
    struct termios t;
    tcgetattr(slave, &t);
    t.c_lflag &= ~(ECHO | ECHONL);
    t.c_oflag &= ~ONLCR;
    tcsetattr(slave, TCSANOW, &t);
    dup2(slave, 0);
    dup2(slave, 1);
    dup2(slave, 2);
    if (slave > 2) {
        close(slave);
    }
    /* As the original: the workload runs in its own directory, where a run script finds the
     * files beside it; where that fails, in the work directory (its path is absolute anyway). */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", argv[0]);
    char *slash = strrchr(dir, '/');
    if (slash) {
        slash[slash == dir ? 1 : 0] = '\0';
    }
    if ((!slash || chdir(dir) != 0) && chdir(work_dir) != 0) {
        /* it runs where it is */
    }
    execv(argv[0], argv);
    int err = errno;
    write_all(error_pipe, &err, sizeof err);
    _exit(127);
}

/* Returns 0, or the errno of a failed exec. */
static int spawn(char **argv)
{
    char slave_name[128];
    int error_pipe[2];
    pty_master = open_pty(slave_name, sizeof slave_name);
    if (pty_master < 0) {
        return errno ? errno : EIO;
    }
    if (pipe2(error_pipe, O_CLOEXEC) != 0) {
        return errno;
    }
    pty_hung_up = false;
    child = fork();
    if (child == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        close(error_pipe[0]);
        exec_in_child(slave_name, argv, error_pipe[1]);
    }
    close(error_pipe[1]);
    int err = 0;
    if (child < 0 || read(error_pipe[0], &err, sizeof err) == (ssize_t)sizeof err) {
        err = child < 0 ? errno : err;
        if (child > 0) {
            waitpid(child, NULL, 0);
        }
        child = -1;
        close(pty_master);
        pty_master = -1;
    }
    close(error_pipe[0]);
    fcntl(pty_master, F_SETFL, O_NONBLOCK);
    return err;
}

static void relay_output(void)
{
    char buf[OUTPUT_CHUNK];
    ssize_t n;
    while (pty_master >= 0 && (n = read(pty_master, buf, sizeof buf)) > 0) {
        send_frame(session, FRAME_OUTPUT, buf, (size_t)n);
    }
    if (pty_master >= 0 && n < 0 && errno == EIO) {
        pty_hung_up = true;
    }
}

static void send_exit(int code, int signal_number)
{
    uint8_t payload[8];
    put_le32(payload, (uint32_t)code);
    put_le32(payload + 4, (uint32_t)signal_number);
    send_frame(session, FRAME_EXIT, payload, sizeof payload);
    session = NULL;
}

/* The program that path needs to start and that is missing in the guest: the interpreter of its
 * #! line, or the dynamic loader an ELF names (PT_INTERP). Empty when none is missing. */
static void find_missing_interpreter(const char *path, char *out, size_t size)
{
    char head[256], interpreter[256] = "";
    const char *what = "";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, head, sizeof head - 1) : -1;
    out[0] = '\0';
    if (n > 2 && head[0] == '#' && head[1] == '!') {
        head[n] = '\0';
        char *start = head + 2 + strspn(head + 2, " \t");
        start[strcspn(start, " \t\r\n")] = '\0';
        snprintf(interpreter, sizeof interpreter, "%s", start);
        what = "its #! line";
    } else if (n >= (ssize_t)sizeof(Elf64_Ehdr) && memcmp(head, ELFMAG, SELFMAG) == 0) {
        Elf64_Ehdr elf;
        memcpy(&elf, head, sizeof elf);
        for (int i = 0; i < elf.e_phnum; i++) {
            Elf64_Phdr ph;
            if (pread(fd, &ph, sizeof ph, (off_t)(elf.e_phoff + (uint64_t)i * elf.e_phentsize)) != (ssize_t)sizeof ph) {
                break;
            }
            if (ph.p_type == PT_INTERP) {
                size_t len = ph.p_filesz < sizeof interpreter ? ph.p_filesz : sizeof interpreter - 1;
                if (pread(fd, interpreter, len, (off_t)ph.p_offset) == (ssize_t)len) {
                    interpreter[len] = '\0';
                    what = "its ELF interpreter";
                }
                break;
            }
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    if (interpreter[0] && access(interpreter, X_OK) != 0) {
        snprintf(out, size, "%s (%s)", interpreter, what);
    }
}

static void end_session_with_error(int err, const char *what)
{
    char text[1024], missing[300] = "";
    if (err == ENOENT) {   /* execv says ENOENT when what the file needs to start is missing */
        find_missing_interpreter(what, missing, sizeof missing);
    }
    if (missing[0]) {
        snprintf(text, sizeof text, "runner: cannot run %s: %s is not in the guest\n", what, missing);
    } else {
        snprintf(text, sizeof text, "runner: cannot run %s: %s\n", what, strerror(err));
    }
    send_output(text);
    send_exit(127, 0);
}

static void start_workload(void)
{
    waiting_for_enter = false;
    int err = spawn(pending_argv);
    if (err) {
        end_session_with_error(err, pending_argv[0]);
    }
    free_argv(pending_argv);
    pending_argv = NULL;
}

/* Reaps every ended process (we are the subreaper of the workload's orphans). */
static void reap_children(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0 && pid != child) {
    }
    if (pid <= 0 || child < 0) {
        return;
    }
    child = -1;
    relay_output();   /* what it wrote last is still in the pty */
    close(pty_master);
    pty_master = -1;
    if (wrap) {
        send_output("Stop tracing\n");
    }
    send_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 0, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* ------------------------------------------------------------ frames in */

static void handle_run(Channel *c, const uint8_t *p, size_t len)
{
    if (session) {
        send_ack(c, EBUSY, "a workload is already running");
        return;
    }
    char **argv = len > 1 ? parse_argv(p + 1, len - 1) : NULL;
    if (!argv) {
        send_ack(c, EINVAL, "RUN needs at least one argument");
        return;
    }
    if (access(argv[0], X_OK) != 0) {
        char text[512];
        snprintf(text, sizeof text, "cannot run %s in the guest: %s", argv[0], strerror(errno));
        send_ack(c, errno, text);
        free_argv(argv);
        return;
    }
    session = c;
    wrap = p[0] & RUN_WRAP;
    pending_argv = argv;
    send_ack(c, 0, "");
    if (wrap) {
        /* The workload protocol, played for a program that knows nothing of it. */
        send_output("-----begin workload info-----\n-----end workload info-----\n"
                    "Ready to trace. Press enter to continue\n");
        waiting_for_enter = true;
    } else {
        start_workload();
    }
}

static void handle_frame(Channel *c, uint8_t type, const uint8_t *p, size_t len)
{
    char error[1024];
    switch (type) {
    case FRAME_PING:
        send_frame(c, FRAME_PONG, p, len);
        break;
    case FRAME_FILE:
        if (len < 1) {
            send_ack(c, EINVAL, "FILE needs a flags byte");
        } else if (store_workload(p + 1, len - 1, p[0] & FILE_GZIP, error, sizeof error)) {
            send_ack(c, 0, workload_path);
        } else {
            send_ack(c, EIO, error);
        }
        break;
    case FRAME_RUN:
        handle_run(c, p, len);
        break;
    case FRAME_STDIN:
        if (waiting_for_enter && memchr(p, '\n', len)) {
            start_workload();
        } else if (pty_master >= 0) {
            write_all(pty_master, p, len);
        }
        break;
    case FRAME_KILL:
        if (child > 0) {
            kill(-child, SIGKILL);
            kill(child, SIGKILL);
        } else if (session && waiting_for_enter) {
            free_argv(pending_argv);
            pending_argv = NULL;
            waiting_for_enter = false;
            send_exit(0, SIGKILL);
        }
        break;
    default:
        break;   /* unknown frames are ignored, so a newer host can probe */
    }
}

/* Parses every whole frame in c->buf; keeps the rest for the next read. */
static void parse_frames(Channel *c)
{
    size_t pos = 0;
    while (c->len - pos >= FRAME_MAGIC_LEN) {
        uint8_t *start = c->buf + pos;
        if (memcmp(start, FRAME_MAGIC, FRAME_MAGIC_LEN) != 0) {
            uint8_t *next = memchr(start + 1, FRAME_MAGIC[0], c->len - pos - 1);
            pos = next ? (size_t)(next - c->buf) : c->len;
            continue;
        }
        if (c->len - pos < FRAME_HEADER_LEN) {
            break;
        }
        uint32_t len = get_le32(start + 5);
        if (len > FRAME_MAX_PAYLOAD) {
            pos++;   /* not a frame after all: resynchronise */
            continue;
        }
        size_t total = FRAME_HEADER_LEN + len + FRAME_TRAILER_LEN;
        if (c->len - pos < total) {
            break;
        }
        uint32_t crc = (uint32_t)crc32(0, start + 4, 5 + len);
        if (crc != get_le32(start + FRAME_HEADER_LEN + len)) {
            send_frame(c, FRAME_NAK, start + 4, 1);
            pos++;
            continue;
        }
        handle_frame(c, start[4], start + FRAME_HEADER_LEN, len);
        pos += total;
    }
    memmove(c->buf, c->buf + pos, c->len - pos);
    c->len -= pos;
}

/*
 * Nothing arrived for a while and a frame is still incomplete: it was truncated
 * (or its length field corrupted). Skip its first byte so that what follows is
 * parsed; the host sends the frame again when it gets no answer.
 */
static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void drop_stalled_frame(Channel *c)
{
    if (c->len > 0 && now_ms() - c->last_data_ms >= PARTIAL_FRAME_PATIENCE_MS) {
        memmove(c->buf, c->buf + 1, c->len - 1);
        c->len--;
        parse_frames(c);
    }
}

static void read_channel(Channel *c)
{
    if (c->cap - c->len < 65536) {
        c->cap = c->cap * 2 + 65536;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len);
    if (n <= 0) {
        c->hung_up = n == 0 || errno != EINTR;
        return;
    }
    c->hung_up = false;
    c->last_data_ms = now_ms();
    c->len += (size_t)n;
    parse_frames(c);
}

/* ------------------------------------------------------------ set-up */

/* A serial port (or any terminal, or any file descriptor that carries frames). */
static void open_port(const char *path)
{
    int fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 || num_channels == 2) {
        return;
    }
    struct termios t;
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        cfsetspeed(&t, B115200);
        tcsetattr(fd, TCSANOW, &t);
        tcflush(fd, TCIOFLUSH);
    }
    channels[num_channels++] = (Channel){ .name = path, .fd = fd };
}

/* The port's node is /dev/vportNpM; its name is in sysfs (no udev needed). */
static void open_virtio_port(void)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[512], name[128] = "";
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) {
            continue;
        }
        if (!fgets(name, sizeof name, f)) {
            name[0] = 0;
        }
        fclose(f);
        name[strcspn(name, "\n")] = 0;
        if (strcmp(name, VIRTIO_PORT_NAME) == 0) {
            snprintf(path, sizeof path, "/dev/%s", e->d_name);
            int fd = open(path, O_RDWR | O_CLOEXEC);
            if (fd >= 0) {
                channels[num_channels++] = (Channel){ .name = strdup(path), .fd = fd };
            }
            break;
        }
    }
    if (d) {
        closedir(d);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        work_dir = argv[1];
    }
    if (argc > 2) {
        for (int i = 2; i < argc; i++) {
            open_port(argv[i]);   /* given ports (the tests run the runner on a host pty) */
        }
    } else {
        open_port(SERIAL_PATH);
        open_virtio_port();
    }
    if (num_channels == 0) {
        fprintf(stderr, "runner: neither %s nor the virtio port %s can be opened\n",
                SERIAL_PATH, VIRTIO_PORT_NAME);
        return 1;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    int sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);

    for (;;) {
        /*
         * A virtio port with no host connected, and a terminal its workload
         * closed, report POLLHUP at once: leave them out, and look again later.
         */
        struct pollfd fds[4];
        int n = 0;
        bool any_hung_up = false;
        for (int i = 0; i < num_channels; i++) {
            any_hung_up |= channels[i].hung_up;
            fds[n++] = (struct pollfd){ .fd = channels[i].hung_up ? -1 : channels[i].fd,
                                        .events = POLLIN };
        }
        fds[n++] = (struct pollfd){ .fd = sigfd, .events = POLLIN };
        fds[n++] = (struct pollfd){ .fd = pty_hung_up ? -1 : pty_master, .events = POLLIN };
        bool any_partial = false;
        for (int i = 0; i < num_channels; i++) {
            any_partial |= channels[i].len > 0;
        }
        int timeout = any_hung_up ? 100 : any_partial ? PARTIAL_FRAME_PATIENCE_MS : -1;
        int ready = poll(fds, (nfds_t)n, timeout);
        if (ready <= 0) {
            for (int i = 0; i < num_channels; i++) {
                channels[i].hung_up = false;
                drop_stalled_frame(&channels[i]);
            }
            continue;
        }
        for (int i = 0; i < num_channels; i++) {
            if (fds[i].revents & POLLIN) {
                read_channel(&channels[i]);
            } else if (fds[i].revents & (POLLHUP | POLLERR)) {
                channels[i].hung_up = true;
            }
        }
        if (pty_master >= 0 && (fds[n - 1].revents & POLLIN)) {
            relay_output();
        }
        if (fds[n - 2].revents & POLLIN) {
            struct signalfd_siginfo info;
            while (read(sigfd, &info, sizeof info) > 0) {
            }
            reap_children();
        }
    }
}
