/*
 * A fake libnvidia-ml.so for tests and for machines without an NVIDIA GPU.
 *
 * It exports the NVML symbols that nvml-wrapper calls for kube-gpu-metrics and
 * answers them from a small text file named by FAKE_NVML_CONFIG. The file is
 * re-read whenever its modification time or size changes, so a test can change
 * values, lose a GPU or inject a slow call while the agent runs.
 *
 * Format, one directive per line ('#' starts a comment):
 *
 *   driver 550.54.14
 *   init_error DRIVER_NOT_LOADED
 *   gpu name="NVIDIA GeForce RTX 4090" uuid=GPU-aaaa util=42 mem_util=30 \
 *       mem_total=25757220864 mem_used=8589934592 temp=61 power_mw=312000 sm_clock_mhz=2520
 *   error <gpu|*> <call|*> <GPU_IS_LOST|NOT_SUPPORTED|NOT_FOUND|UNKNOWN|...>
 *   delay <gpu|*> <call|*> <milliseconds>
 *   process <gpu> pid=1234 sm=30 mem=10
 *
 * Calls: count handle name uuid index memory utilization temperature power
 * clock processes. A "gpu" line must fit on one line (the backslash above is
 * only for this comment).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>

typedef int nvmlReturn_t;
typedef struct fake_device *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

enum call {
    CALL_COUNT,
    CALL_HANDLE,
    CALL_NAME,
    CALL_UUID,
    CALL_INDEX,
    CALL_MEMORY,
    CALL_UTILIZATION,
    CALL_TEMPERATURE,
    CALL_POWER,
    CALL_CLOCK,
    CALL_PROCESSES,
    CALL_MAX
};

static const char *const CALL_NAMES[CALL_MAX] = {
    "count", "handle", "name", "uuid", "index", "memory",
    "utilization", "temperature", "power", "clock", "processes",
};

#define MAX_GPUS 64
#define MAX_PROCS 64

struct fake_process {
    unsigned int pid, sm, mem;
};

struct fake_gpu {
    char name[96];
    char uuid[96];
    unsigned int util, mem_util, temp, power_mw, sm_clock_mhz;
    unsigned long long mem_total, mem_used;
    int error[CALL_MAX];
    unsigned int delay_ms[CALL_MAX];
    unsigned int nprocs;
    struct fake_process procs[MAX_PROCS];
};

struct fake_config {
    char driver[80];
    int init_error;
    unsigned int ngpus;
    struct fake_gpu gpus[MAX_GPUS];
    /* Errors and delays for GPUs named by '*', applied to every GPU. */
    int any_error[CALL_MAX];
    unsigned int any_delay_ms[CALL_MAX];
};

/* Handles point into this array, so they stay valid across reloads. */
struct fake_device {
    unsigned int index;
};
static struct fake_device DEVICES[MAX_GPUS];

static pthread_mutex_t LOCK = PTHREAD_MUTEX_INITIALIZER;
static struct fake_config CONFIG;
static struct timespec LOADED_MTIME;
static off_t LOADED_SIZE = -1;
static int INITIALIZED;

static int error_code(const char *name) {
    static const struct {
        const char *name;
        int code;
    } CODES[] = {
        {"SUCCESS", NVML_SUCCESS},
        {"UNINITIALIZED", NVML_ERROR_UNINITIALIZED},
        {"INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT},
        {"NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED},
        {"NO_PERMISSION", NVML_ERROR_NO_PERMISSION},
        {"NOT_FOUND", NVML_ERROR_NOT_FOUND},
        {"DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED},
        {"TIMEOUT", NVML_ERROR_TIMEOUT},
        {"GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST},
        {"UNKNOWN", NVML_ERROR_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof CODES / sizeof CODES[0]; i++)
        if (strcmp(CODES[i].name, name) == 0) return CODES[i].code;
    return NVML_ERROR_UNKNOWN;
}

static int call_index(const char *name) {
    for (int i = 0; i < CALL_MAX; i++)
        if (strcmp(CALL_NAMES[i], name) == 0) return i;
    return -1;
}

/* Splits a line into tokens in place; "quoted values" keep their spaces. */
static int tokenize(char *line, char **tokens, int max) {
    int n = 0;
    char *p = line;
    while (*p && n < max) {
        while (*p == ' ' || *p == '\t') p++;
        if (!*p || *p == '#') break;
        char *out = p;
        tokens[n++] = out;
        int quoted = 0;
        while (*p && (quoted || (*p != ' ' && *p != '\t'))) {
            if (*p == '"') {
                quoted = !quoted;
                p++;
                continue;
            }
            *out++ = *p++;
        }
        if (*p) p++;
        *out = '\0';
    }
    return n;
}

static void parse_gpu(struct fake_config *cfg, char **tok, int n) {
    if (cfg->ngpus >= MAX_GPUS) return;
    struct fake_gpu *g = &cfg->gpus[cfg->ngpus];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "NVIDIA GeForce RTX 4090");
    snprintf(g->uuid, sizeof g->uuid, "GPU-00000000-0000-0000-0000-%012u", cfg->ngpus);
    g->mem_total = 25757220864ULL;
    for (int i = 1; i < n; i++) {
        char *eq = strchr(tok[i], '=');
        if (!eq) continue;
        *eq = '\0';
        const char *k = tok[i], *v = eq + 1;
        if (!strcmp(k, "name")) snprintf(g->name, sizeof g->name, "%s", v);
        else if (!strcmp(k, "uuid")) snprintf(g->uuid, sizeof g->uuid, "%s", v);
        else if (!strcmp(k, "util")) g->util = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "mem_util")) g->mem_util = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "mem_total")) g->mem_total = strtoull(v, 0, 10);
        else if (!strcmp(k, "mem_used")) g->mem_used = strtoull(v, 0, 10);
        else if (!strcmp(k, "temp")) g->temp = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "power_mw")) g->power_mw = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "sm_clock_mhz")) g->sm_clock_mhz = (unsigned)strtoul(v, 0, 10);
    }
    cfg->ngpus++;
}

/* Applies an "error" or "delay" directive to one GPU or, with '*', to all. */
static void parse_fault(struct fake_config *cfg, char **tok, int n, int is_delay) {
    if (n < 4) return;
    int all_gpus = !strcmp(tok[1], "*");
    unsigned gpu = all_gpus ? 0 : (unsigned)strtoul(tok[1], 0, 10);
    int all_calls = !strcmp(tok[2], "*");
    int call = all_calls ? -1 : call_index(tok[2]);
    if (!all_calls && call < 0) return;
    if (!all_gpus && gpu >= MAX_GPUS) return;
    for (int c = 0; c < CALL_MAX; c++) {
        if (!all_calls && c != call) continue;
        if (is_delay) {
            unsigned ms = (unsigned)strtoul(tok[3], 0, 10);
            if (all_gpus) cfg->any_delay_ms[c] = ms;
            else cfg->gpus[gpu].delay_ms[c] = ms;
        } else {
            int code = error_code(tok[3]);
            if (all_gpus) cfg->any_error[c] = code;
            else cfg->gpus[gpu].error[c] = code;
        }
    }
}

static void parse_process(struct fake_config *cfg, char **tok, int n) {
    if (n < 2) return;
    unsigned gpu = (unsigned)strtoul(tok[1], 0, 10);
    if (gpu >= MAX_GPUS) return;
    struct fake_gpu *g = &cfg->gpus[gpu];
    if (g->nprocs >= MAX_PROCS) return;
    struct fake_process *p = &g->procs[g->nprocs++];
    memset(p, 0, sizeof *p);
    for (int i = 2; i < n; i++) {
        char *eq = strchr(tok[i], '=');
        if (!eq) continue;
        *eq = '\0';
        unsigned v = (unsigned)strtoul(eq + 1, 0, 10);
        if (!strcmp(tok[i], "pid")) p->pid = v;
        else if (!strcmp(tok[i], "sm")) p->sm = v;
        else if (!strcmp(tok[i], "mem")) p->mem = v;
    }
}

/*
 * Errors and delays may name a GPU before its "gpu" line, so faults are kept
 * in the fixed-size array and "gpu" lines only fill in identity and values.
 */
static void parse_config(struct fake_config *cfg, char *text) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->driver, sizeof cfg->driver, "550.54.14");
    char *saveptr = NULL;
    for (char *line = strtok_r(text, "\n", &saveptr); line; line = strtok_r(NULL, "\n", &saveptr)) {
        char *tok[32];
        int n = tokenize(line, tok, 32);
        if (n == 0) continue;
        if (!strcmp(tok[0], "gpu")) {
            /* keep faults already parsed for this index */
            unsigned idx = cfg->ngpus;
            if (idx >= MAX_GPUS) continue;
            int errors[CALL_MAX];
            unsigned delays[CALL_MAX];
            unsigned nprocs = cfg->gpus[idx].nprocs;
            struct fake_process procs[MAX_PROCS];
            memcpy(errors, cfg->gpus[idx].error, sizeof errors);
            memcpy(delays, cfg->gpus[idx].delay_ms, sizeof delays);
            memcpy(procs, cfg->gpus[idx].procs, sizeof procs);
            parse_gpu(cfg, tok, n);
            memcpy(cfg->gpus[idx].error, errors, sizeof errors);
            memcpy(cfg->gpus[idx].delay_ms, delays, sizeof delays);
            memcpy(cfg->gpus[idx].procs, procs, sizeof procs);
            cfg->gpus[idx].nprocs = nprocs;
        } else if (!strcmp(tok[0], "error")) {
            parse_fault(cfg, tok, n, 0);
        } else if (!strcmp(tok[0], "delay")) {
            parse_fault(cfg, tok, n, 1);
        } else if (!strcmp(tok[0], "process")) {
            parse_process(cfg, tok, n);
        } else if (!strcmp(tok[0], "driver") && n > 1) {
            snprintf(cfg->driver, sizeof cfg->driver, "%s", tok[1]);
        } else if (!strcmp(tok[0], "init_error") && n > 1) {
            cfg->init_error = error_code(tok[1]);
        }
    }
}

/* Re-reads the config file if it changed. Call with LOCK held. */
static void reload_locked(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    if (!path) {
        if (LOADED_SIZE != -2) {
            memset(&CONFIG, 0, sizeof CONFIG);
            LOADED_SIZE = -2;
        }
        return;
    }
    struct stat st;
    if (stat(path, &st) != 0) return;
    if (st.st_size == LOADED_SIZE && st.st_mtim.tv_sec == LOADED_MTIME.tv_sec &&
        st.st_mtim.tv_nsec == LOADED_MTIME.tv_nsec)
        return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    char *text = calloc(1, (size_t)st.st_size + 1);
    if (!text) {
        fclose(f);
        return;
    }
    size_t len = fread(text, 1, (size_t)st.st_size, f);
    text[len] = '\0';
    fclose(f);
    parse_config(&CONFIG, text);
    free(text);
    LOADED_SIZE = st.st_size;
    LOADED_MTIME = st.st_mtim;
}

static void sleep_ms(unsigned ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/*
 * Takes a copy of one GPU's state for a call, then applies its injected delay
 * outside the lock, so a hung GPU never blocks calls for the others.
 */
static nvmlReturn_t enter(nvmlDevice_t device, enum call call, struct fake_gpu *out) {
    if (!device || device < DEVICES || device >= DEVICES + MAX_GPUS)
        return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&LOCK);
    if (!INITIALIZED) {
        pthread_mutex_unlock(&LOCK);
        return NVML_ERROR_UNINITIALIZED;
    }
    reload_locked();
    unsigned idx = device->index;
    if (idx >= CONFIG.ngpus) {
        pthread_mutex_unlock(&LOCK);
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *out = CONFIG.gpus[idx];
    int err = out->error[call] ? out->error[call] : CONFIG.any_error[call];
    unsigned delay = out->delay_ms[call] ? out->delay_ms[call] : CONFIG.any_delay_ms[call];
    pthread_mutex_unlock(&LOCK);
    if (delay) sleep_ms(delay);
    return err;
}

nvmlReturn_t nvmlInit_v2(void) {
    pthread_mutex_lock(&LOCK);
    LOADED_SIZE = -1;
    reload_locked();
    int err = CONFIG.init_error;
    if (!err) INITIALIZED = 1;
    pthread_mutex_unlock(&LOCK);
    return err;
}

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&LOCK);
    INITIALIZED = 0;
    pthread_mutex_unlock(&LOCK);
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!version || length == 0) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&LOCK);
    reload_locked();
    snprintf(version, length, "%s", CONFIG.driver);
    pthread_mutex_unlock(&LOCK);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&LOCK);
    if (!INITIALIZED) {
        pthread_mutex_unlock(&LOCK);
        return NVML_ERROR_UNINITIALIZED;
    }
    reload_locked();
    int err = CONFIG.any_error[CALL_COUNT];
    unsigned delay = CONFIG.any_delay_ms[CALL_COUNT];
    *count = CONFIG.ngpus;
    pthread_mutex_unlock(&LOCK);
    if (delay) sleep_ms(delay);
    return err;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!device || index >= MAX_GPUS) return NVML_ERROR_INVALID_ARGUMENT;
    DEVICES[index].index = index;
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(&DEVICES[index], CALL_HANDLE, &gpu);
    if (err) return err;
    *device = &DEVICES[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_NAME, &gpu);
    if (err) return err;
    if (!name || length == 0) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(name, length, "%s", gpu.name);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_UUID, &gpu);
    if (err) return err;
    if (!uuid || length == 0) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(uuid, length, "%s", gpu.uuid);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_INDEX, &gpu);
    if (err) return err;
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = device->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_MEMORY, &gpu);
    if (err) return err;
    /* NVML checks the struct version; nvml-wrapper sets NVML_STRUCT_VERSION(Memory, 2). */
    if (!memory || memory->version != ((unsigned)sizeof(nvmlMemory_v2_t) | (2u << 24)))
        return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = gpu.mem_total;
    memory->used = gpu.mem_used;
    memory->reserved = 0;
    memory->free = gpu.mem_total > gpu.mem_used ? gpu.mem_total - gpu.mem_used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_UTILIZATION, &gpu);
    if (err) return err;
    if (!utilization) return NVML_ERROR_INVALID_ARGUMENT;
    utilization->gpu = gpu.util;
    utilization->memory = gpu.mem_util;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_TEMPERATURE, &gpu);
    if (err) return err;
    if (!temp || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *temp = gpu.temp;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_POWER, &gpu);
    if (err) return err;
    if (!power) return NVML_ERROR_INVALID_ARGUMENT;
    *power = gpu.power_mw;
    return NVML_SUCCESS;
}

/* Clock type 1 is NVML_CLOCK_SM; others report the same value. */
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *clock) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_CLOCK, &gpu);
    if (err) return err;
    if (!clock || type < 0 || type > 3) return NVML_ERROR_INVALID_ARGUMENT;
    *clock = gpu.sm_clock_mhz;
    return NVML_SUCCESS;
}

static unsigned long long now_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (unsigned long long)tv.tv_sec * 1000000ULL + (unsigned long long)tv.tv_usec;
}

/*
 * Like NVML: a NULL buffer asks for the count (INSUFFICIENT_SIZE), and no
 * sample newer than lastSeenTimeStamp is NOT_FOUND.
 */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                             nvmlProcessUtilizationSample_t *samples,
                                             unsigned int *count,
                                             unsigned long long lastSeenTimeStamp) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_PROCESSES, &gpu);
    if (err) return err;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long ts = now_us();
    if (gpu.nprocs == 0 || ts <= lastSeenTimeStamp) {
        *count = 0;
        return NVML_ERROR_NOT_FOUND;
    }
    if (!samples || *count < gpu.nprocs) {
        *count = gpu.nprocs;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned i = 0; i < gpu.nprocs; i++) {
        samples[i].pid = gpu.procs[i].pid;
        samples[i].timeStamp = ts;
        samples[i].smUtil = gpu.procs[i].sm;
        samples[i].memUtil = gpu.procs[i].mem;
        samples[i].encUtil = 0;
        samples[i].decUtil = 0;
    }
    *count = gpu.nprocs;
    return NVML_SUCCESS;
}
