// fuse-rtt: what one FUSE round trip costs on this machine, through
// /dev/fuse (the transport fuser and stratafs use) and through FUSE over
// io_uring (per-CPU queues; the kernel's `fuse.enable_uring` must be on).
//
// It mounts a file system of one empty file, asks the kernel for an xattr of
// that file N times (always a round trip: the kernel caches no xattrs), and
// prints the time per call. Nothing is read from or written to any disk.
//
//   cc -O2 -pthread -o fuse-rtt bench/fuse-rtt.c
//   ./fuse-rtt dev   MNT [N] [THREADS]  # THREADS daemon threads reading /dev/fuse (default 2)
//   ./fuse-rtt uring MNT [N]            # one ring, and one pinned thread, per CPU
//
// Run as root. It exits with the mount gone (lazy unmount) whatever happens.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

// FUSE over io_uring (kernel 6.14+; not in this system's <linux/fuse.h>).
#define OVER_IO_URING_FLAGS2 (1u << (41 - 32))
#define URING_CMD_REGISTER 1
#define URING_CMD_COMMIT_AND_FETCH 2
struct ring_ent_in_out {
    uint64_t flags, commit_id;
    uint32_t payload_sz, padding;
    uint64_t reserved;
};
struct ring_req_header {
    char in_out[128];
    char op_in[128];
    struct ring_ent_in_out ent;
};
struct ring_cmd_req {
    uint64_t flags, commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

#define PAYLOAD (1u << 20)
#define FILE_INO 2

static int devfd = -1;
// Requests answered by each transport (to tell that the rings carried them).
static long served_dev, served_ring;
static const char *mnt;

static void die(const char *what) {
    fprintf(stderr, "fuse-rtt: %s: %s\n", what, strerror(errno));
    if (mnt)
        umount2(mnt, MNT_DETACH);
    exit(1);
}

static void fill_attr(struct fuse_attr *a, uint64_t ino) {
    memset(a, 0, sizeof *a);
    a->ino = ino;
    a->mode = ino == FUSE_ROOT_ID ? 040755 : 0100644;
    a->nlink = ino == FUSE_ROOT_ID ? 2 : 1;
    a->blksize = 4096;
}

// Answers one request: the reply payload goes to out, its size is returned;
// *err gets the (negative) errno.
static size_t answer(const struct fuse_in_header *in, const void *op, const char *rest, void *out,
                     int *err) {
    *err = 0;
    switch (in->opcode) {
    case FUSE_LOOKUP: {
        const char *name = rest;
        if (in->nodeid != FUSE_ROOT_ID || strcmp(name, "f") != 0) {
            *err = -ENOENT;
            return 0;
        }
        struct fuse_entry_out *e = out;
        memset(e, 0, sizeof *e);
        e->nodeid = FILE_INO;
        e->entry_valid = e->attr_valid = 86400;
        fill_attr(&e->attr, FILE_INO);
        return sizeof *e;
    }
    case FUSE_GETATTR: {
        struct fuse_attr_out *a = out;
        memset(a, 0, sizeof *a);
        a->attr_valid = 86400;
        fill_attr(&a->attr, in->nodeid);
        return sizeof *a;
    }
    case FUSE_GETXATTR:
        *err = -ENODATA;
        return 0;
    default:
        (void)op;
        *err = -ENOSYS;
        return 0;
    }
}

// The classic transport: threads reading requests from /dev/fuse.
static void *dev_loop(void *arg) {
    (void)arg;
    static __thread char buf[PAYLOAD + 4096];
    char out[4096];
    for (;;) {
        ssize_t n = read(devfd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR || errno == ENOENT)
                continue;
            return NULL; // unmounted
        }
        struct fuse_in_header *in = (void *)buf;
        if (in->opcode == FUSE_FORGET || in->opcode == FUSE_BATCH_FORGET)
            continue;
        __atomic_add_fetch(&served_dev, 1, __ATOMIC_RELAXED);
        int err;
        const char *args = buf + sizeof *in;
        size_t len = answer(in, args, args, out, &err);
        struct fuse_out_header oh = {.len = sizeof oh + len, .error = err, .unique = in->unique};
        struct iovec iov[2] = {{&oh, sizeof oh}, {out, len}};
        if (writev(devfd, iov, 2) < 0 && errno != ENOENT)
            return NULL;
    }
}

// FUSE over io_uring: one ring per CPU, its thread pinned there; the kernel
// queues a request on the ring of the CPU its caller runs on.
struct ring {
    int fd, cpu;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes; // 128-byte entries: index with sqe_at()
    struct io_uring_cqe *cqes;
    struct ring_req_header *hdr;
    char *payload;
    struct iovec iov[2];
};

static struct io_uring_sqe *sqe_at(struct ring *r, unsigned i) {
    return (struct io_uring_sqe *)((char *)r->sqes + 128 * i);
}

static void ring_setup(struct ring *r) {
    struct io_uring_params p = {.flags = IORING_SETUP_SQE128};
    r->fd = syscall(__NR_io_uring_setup, 4, &p);
    if (r->fd < 0)
        die("io_uring_setup");
    char *sq = mmap(0, p.sq_off.array + p.sq_entries * 4, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                    r->fd, IORING_OFF_SQ_RING);
    char *cq = mmap(0, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe), PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
    r->sqes = mmap(0, p.sq_entries * 128, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
        die("mmap io_uring");
    r->sq_tail = (void *)(sq + p.sq_off.tail);
    r->sq_mask = (void *)(sq + p.sq_off.ring_mask);
    r->sq_array = (void *)(sq + p.sq_off.array);
    r->cq_head = (void *)(cq + p.cq_off.head);
    r->cq_tail = (void *)(cq + p.cq_off.tail);
    r->cq_mask = (void *)(cq + p.cq_off.ring_mask);
    r->cqes = (void *)(cq + p.cq_off.cqes);
    r->hdr = aligned_alloc(4096, sizeof *r->hdr + 4096);
    r->payload = aligned_alloc(4096, PAYLOAD);
    if (!r->hdr || !r->payload)
        die("alloc");
    r->iov[0] = (struct iovec){r->hdr, sizeof *r->hdr};
    r->iov[1] = (struct iovec){r->payload, PAYLOAD};
}

// Queues a REGISTER or COMMIT_AND_FETCH command and waits for the next request.
static int ring_cmd(struct ring *r, unsigned op, uint64_t commit_id) {
    unsigned tail = *r->sq_tail, i = tail & *r->sq_mask;
    struct io_uring_sqe *sqe = sqe_at(r, i);
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = devfd;
    sqe->cmd_op = op;
    sqe->addr = (uint64_t)(uintptr_t)r->iov;
    sqe->len = 2;
    struct ring_cmd_req *req = (void *)sqe->cmd;
    req->commit_id = commit_id;
    req->qid = r->cpu;
    r->sq_array[i] = i;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    for (;;) {
        int n = syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
        if (n >= 0 || errno != EINTR)
            break;
    }
    unsigned head = *r->cq_head;
    while (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) {
        if (syscall(__NR_io_uring_enter, r->fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0 && errno != EINTR)
            die("io_uring_enter");
    }
    int res = r->cqes[head & *r->cq_mask].res;
    __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

static void *ring_loop(void *arg) {
    struct ring *r = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(r->cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    ring_setup(r);
    int res = ring_cmd(r, URING_CMD_REGISTER, 0);
    for (;;) {
        if (res < 0) {
            errno = -res;
            if (res == -ENOTCONN || res == -ECANCELED)
                return NULL;
            die("ring command");
        }
        __atomic_add_fetch(&served_ring, 1, __ATOMIC_RELAXED);
        struct fuse_in_header *in = (void *)r->hdr->in_out;
        int err;
        char out[4096];
        size_t len = answer(in, r->hdr->op_in, r->payload, out, &err);
        memcpy(r->payload, out, len);
        uint64_t unique = in->unique;
        struct fuse_out_header *oh = (void *)r->hdr->in_out;
        memset(oh, 0, sizeof *oh);
        oh->len = sizeof *oh + len;
        oh->error = err;
        oh->unique = unique;
        r->hdr->ent.payload_sz = len;
        res = ring_cmd(r, URING_CMD_COMMIT_AND_FETCH, r->hdr->ent.commit_id);
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[1], "dev") && strcmp(argv[1], "uring"))) {
        fprintf(stderr, "usage: fuse-rtt dev|uring MNT [N] [THREADS]\n");
        return 2;
    }
    int uring = !strcmp(argv[1], "uring");
    long n = argc > 3 ? atol(argv[3]) : 100000;
    int threads = argc > 4 ? atoi(argv[4]) : 2;
    devfd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (devfd < 0)
        die("/dev/fuse");
    char opts[128];
    snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0,default_permissions", devfd);
    if (mount("fuse-rtt", argv[2], "fuse.fuse-rtt", MS_NOSUID | MS_NODEV, opts))
        die("mount");
    mnt = argv[2];

    static char buf[PAYLOAD + 4096];
    ssize_t got = read(devfd, buf, sizeof buf);
    struct fuse_in_header *in = (void *)buf;
    struct fuse_init_in *init = (void *)(buf + sizeof *in);
    if (got < (ssize_t)sizeof *in || in->opcode != FUSE_INIT)
        die("no INIT");
    uint32_t flags2 = init->flags & FUSE_INIT_EXT ? init->flags2 : 0;
    if (uring && !(flags2 & OVER_IO_URING_FLAGS2)) {
        errno = ENOTSUP;
        die("the kernel offers no FUSE over io_uring (echo Y > /sys/module/fuse/parameters/enable_uring)");
    }
    struct fuse_init_out io = {
        .major = FUSE_KERNEL_VERSION,
        .minor = init->minor,
        .max_readahead = init->max_readahead,
        .flags = FUSE_INIT_EXT | FUSE_MAX_PAGES,
        .flags2 = uring ? OVER_IO_URING_FLAGS2 : 0,
        .max_background = 16,
        .congestion_threshold = 12,
        .max_write = 128 * 1024,
        .max_pages = 32,
    };
    struct fuse_out_header oh = {.len = sizeof oh + sizeof io, .unique = in->unique};
    struct iovec iov[2] = {{&oh, sizeof oh}, {&io, sizeof io}};
    if (writev(devfd, iov, 2) < 0)
        die("INIT reply");

    int cpus = sysconf(_SC_NPROCESSORS_CONF);
    pthread_t t;
    // /dev/fuse still carries FORGETs and INTERRUPTs, and every request
    // until each CPU's ring has registered.
    for (int i = 0; i < (uring ? 1 : threads); i++)
        pthread_create(&t, NULL, dev_loop, NULL);
    if (uring) {
        for (int c = 0; c < cpus; c++) {
            struct ring *r = calloc(1, sizeof *r);
            r->cpu = c;
            pthread_create(&t, NULL, ring_loop, r);
        }
        usleep(200000); // the rings register
    }

    char path[4096];
    snprintf(path, sizeof path, "%s/f", argv[2]);
    char v[64];
    if (getxattr(path, "user.x", v, sizeof v) >= 0 || errno != ENODATA)
        die("getxattr of the test file");
    double t0 = now();
    for (long i = 0; i < n; i++)
        getxattr(path, "user.x", v, sizeof v);
    double dt = now() - t0;
    printf("%s: %.2f us per round trip (%ld getxattr calls; requests answered through /dev/fuse: %ld, "
           "through io_uring: %ld)\n",
           argv[1], dt / n * 1e6, n, __atomic_load_n(&served_dev, __ATOMIC_RELAXED),
           __atomic_load_n(&served_ring, __ATOMIC_RELAXED));
    umount2(argv[2], MNT_DETACH);
    return 0;
}
