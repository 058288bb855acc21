/*
 * A fake libnvidia-ml.so for tests and for machines without an NVIDIA GPU.
 *
 * It exports the NVML symbols that nvml-wrapper calls for kube-gpu-metrics and
 * answers them from a small text file named by FAKE_NVML_CONFIG. The file is
 * re-read whenever its modification time or size changes (checked at most
 * every 100 ms, so the fake costs the agent little CPU), so a test can change
 * values, lose a GPU or inject a slow call while the agent runs.
 *
 * Format, one directive per line ('#' starts a comment):
 *
 *   driver 550.54.14
 *   init_error DRIVER_NOT_LOADED
 *   gpu name="NVIDIA GeForce RTX 4090" uuid=GPU-aaaa util=42 mem_util=30 \
 *       mem_total=25757220864 mem_used=8589934592 temp=61 power_mw=312000 sm_clock_mhz=2520 \
 *       mem_clock_mhz=10501 mem_reserved=352321536 energy_mj=123456789 pcie_replay=0 \
 *       pcie_tx_kbs=2048 pcie_rx_kbs=4096 enc_util=0 dec_util=0 fan=30 pstate=2 \
 *       clock_events=0 viol_power_ns=0 viol_thermal_ns=0 power_limit_mw=450000 \
 *       pci_bus_id=00000000:01:00.0 mem_temp=70 \
 *       ecc=1 ecc_sbe_vol=0 ecc_dbe_vol=0 ecc_sbe_agg=0 ecc_dbe_agg=0 \
 *       remap=1 remap_corr=0 remap_unc=0 remap_pending=0 remap_failure=0 \
 *       retired=1 retired_sbe=0 retired_dbe=0 retired_pending=0
 *   cuda 12040
 *   error <gpu|*> <call|*> <GPU_IS_LOST|NOT_SUPPORTED|NOT_FOUND|UNKNOWN|...>
 *   delay <gpu|*> <call|*> <milliseconds>
 *   process <gpu> pid=1234 sm=30 mem=10 used_mib=2048 kind=compute
 *   mig <gpu> uuid=MIG-aaaa gi=1 ci=0 profile=1g.10gb mem_total=10200547328 mem_used=2147483648 util=40
 *   xid <gpu> <code>
 *
 * Calls: count handle name uuid index memory utilization temperature power
 * clock processes pci energy pcie codec fan pstate clock_events violation
 * fields power_limit ecc remap retired events running mps mig gpm. A "gpu" line must
 * fit on one line (the backslashes above are only for this comment).
 *
 * A "process" line is one utilization sample (sm, mem percent) and one entry
 * in a running-process list: kind=compute (the default), graphics, or mps (a
 * client of the MPS server, listed by nvmlDeviceGetMPSComputeRunningProcesses
 * instead). used_mib=na reports its memory as not available; sm=none leaves
 * it out of the utilization samples.
 *
 * Without mem_temp, ecc=1, remap=1 or retired=1 a GPU answers those calls
 * NOT_SUPPORTED, as a GeForce board does.
 *
 * MIG: a "gpu" line with mig_mode=1 is in MIG mode (mig_mode=0: MIG-capable
 * but off; without it nvmlDeviceGetMigMode answers NOT_SUPPORTED, as a
 * GeForce board does). Its "mig" lines, in order, fill MIG device slots 0, 1,
 * ...; a slot without one answers NOT_FOUND, as NVML does up to the maximum
 * count (7). A MIG handle answers its UUID, the name "<GPU name> MIG
 * <profile>", its memory and its GPU and compute instance IDs; the parent in
 * MIG mode answers utilization NOT_SUPPORTED, as NVML does. "error <gpu> mig
 * ..." fails the parent's MIG calls.
 *
 * GPM (GPU performance monitoring, Hopper and newer): a "gpu" line with gpm=1
 * reports GPM support; without it nvmlGpmQueryDeviceSupport says
 * unsupported and the sample calls answer NOT_SUPPORTED, as on older GPUs.
 * nvmlGpmMigSampleGet takes a sample of a GPU instance (a "mig" line's gi);
 * nvmlGpmMetricsGet over two samples of the same instance answers
 * NVML_GPM_METRIC_GRAPHICS_UTIL as the busy time between them: each "mig"
 * line's util (percent) integrated over time since the library loaded, so a
 * change of util shows in the next interval; other metrics answer
 * NOT_SUPPORTED each. "error <gpu> gpm ..." fails the sample calls.
 *
 * Each "xid" line is delivered once, in order, by nvmlEventSetWait_v2 to a
 * set its GPU is registered in; lines added later are delivered as they
 * appear. "error <gpu> events ..." makes that GPU's registration fail.
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
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long referenceTime;
    unsigned long long violationTime;
} nvmlViolationTime_t;

typedef union {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    long long sllVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

#define NVML_VALUE_NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFULL

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
    CALL_PCI,
    CALL_ENERGY,
    CALL_PCIE,
    CALL_CODEC,
    CALL_FAN,
    CALL_PSTATE,
    CALL_CLOCK_EVENTS,
    CALL_VIOLATION,
    CALL_FIELDS,
    CALL_POWER_LIMIT,
    CALL_ECC,
    CALL_REMAP,
    CALL_RETIRED,
    CALL_EVENTS,
    CALL_RUNNING,
    CALL_MPS,
    CALL_MIG,
    CALL_GPM,
    CALL_MAX
};

static const char *const CALL_NAMES[CALL_MAX] = {
    "count", "handle", "name", "uuid", "index", "memory",
    "utilization", "temperature", "power", "clock", "processes",
    "pci", "energy", "pcie", "codec", "fan", "pstate", "clock_events",
    "violation", "fields", "power_limit", "ecc", "remap", "retired", "events",
    "running", "mps", "mig", "gpm",
};

#define MAX_GPUS 64
#define MAX_PROCS 64
#define MAX_XIDS 64
#define MAX_MIG 7

enum process_kind { KIND_COMPUTE, KIND_GRAPHICS, KIND_MPS };

struct fake_process {
    unsigned int pid, sm, mem;
    int sampled; /* appears in the utilization samples */
    enum process_kind kind;
    unsigned long long used_bytes;
};

struct fake_gpu {
    char name[96];
    char uuid[96];
    char pci_bus_id[32];
    unsigned int util, mem_util, temp, power_mw, sm_clock_mhz;
    unsigned long long mem_total, mem_used;
    unsigned int mem_clock_mhz, pcie_replay, pcie_tx_kbs, pcie_rx_kbs, enc_util, dec_util, fan, pstate;
    unsigned int power_limit_mw;
    int mem_temp; /* -1: no memory temperature sensor */
    unsigned long long mem_reserved, energy_mj, clock_events, viol_power_ns, viol_thermal_ns;
    int ecc, remap, retired; /* 0: not supported */
    int mig_mode;            /* -1: not supported, 0: off, 1: on */
    int gpm;                 /* GPM supported */
    unsigned long long ecc_sbe_vol, ecc_dbe_vol, ecc_sbe_agg, ecc_dbe_agg;
    unsigned int remap_corr, remap_unc, remap_pending, remap_failure;
    unsigned int retired_sbe, retired_dbe, retired_pending;
    int error[CALL_MAX];
    unsigned int delay_ms[CALL_MAX];
    unsigned int nprocs;
    struct fake_process procs[MAX_PROCS];
};

struct fake_config {
    char driver[80];
    int cuda;
    unsigned int nxids;
    struct {
        unsigned int gpu;
        unsigned long long code;
    } xids[MAX_XIDS];
    int init_error;
    unsigned int nmigs;
    struct fake_mig {
        unsigned int gpu, gi, ci, util;
        char uuid[96], profile[32];
        unsigned long long mem_total, mem_used;
    } migs[MAX_GPUS * MAX_MIG];
    unsigned int ngpus;
    struct fake_gpu gpus[MAX_GPUS];
    /* Errors and delays for GPUs named by '*', applied to every GPU. */
    int any_error[CALL_MAX];
    unsigned int any_delay_ms[CALL_MAX];
};

/* Handles point into these arrays, so they stay valid across reloads. */
struct fake_device {
    unsigned int index;
};
static struct fake_device DEVICES[MAX_GPUS];
/* MIG device handles: slot s of GPU g is MIG_DEVICES[g * MAX_MIG + s]. */
static struct fake_device MIG_DEVICES[MAX_GPUS * MAX_MIG];

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
    snprintf(g->pci_bus_id, sizeof g->pci_bus_id, "00000000:%02X:00.0", cfg->ngpus + 1);
    g->mem_total = 25757220864ULL;
    /* GeForce-like defaults: no memory temperature, ECC, remapping or retirement. */
    g->mem_clock_mhz = 10501;
    g->mem_reserved = 352321536ULL;
    g->energy_mj = 123456789ULL;
    g->pcie_tx_kbs = 2048;
    g->pcie_rx_kbs = 4096;
    g->fan = 30;
    g->pstate = 2;
    g->power_limit_mw = 450000;
    g->mem_temp = -1;
    g->mig_mode = -1;
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
        else if (!strcmp(k, "pci_bus_id")) snprintf(g->pci_bus_id, sizeof g->pci_bus_id, "%s", v);
        else if (!strcmp(k, "mem_clock_mhz")) g->mem_clock_mhz = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "mem_reserved")) g->mem_reserved = strtoull(v, 0, 10);
        else if (!strcmp(k, "mem_temp")) g->mem_temp = (int)strtol(v, 0, 10);
        else if (!strcmp(k, "energy_mj")) g->energy_mj = strtoull(v, 0, 10);
        else if (!strcmp(k, "pcie_replay")) g->pcie_replay = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "pcie_tx_kbs")) g->pcie_tx_kbs = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "pcie_rx_kbs")) g->pcie_rx_kbs = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "enc_util")) g->enc_util = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "dec_util")) g->dec_util = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "fan")) g->fan = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "pstate")) g->pstate = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "clock_events")) g->clock_events = strtoull(v, 0, 0);
        else if (!strcmp(k, "viol_power_ns")) g->viol_power_ns = strtoull(v, 0, 10);
        else if (!strcmp(k, "viol_thermal_ns")) g->viol_thermal_ns = strtoull(v, 0, 10);
        else if (!strcmp(k, "power_limit_mw")) g->power_limit_mw = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "ecc")) g->ecc = atoi(v);
        else if (!strcmp(k, "ecc_sbe_vol")) g->ecc_sbe_vol = strtoull(v, 0, 10);
        else if (!strcmp(k, "ecc_dbe_vol")) g->ecc_dbe_vol = strtoull(v, 0, 10);
        else if (!strcmp(k, "ecc_sbe_agg")) g->ecc_sbe_agg = strtoull(v, 0, 10);
        else if (!strcmp(k, "ecc_dbe_agg")) g->ecc_dbe_agg = strtoull(v, 0, 10);
        else if (!strcmp(k, "remap")) g->remap = atoi(v);
        else if (!strcmp(k, "remap_corr")) g->remap_corr = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "remap_unc")) g->remap_unc = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "remap_pending")) g->remap_pending = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "remap_failure")) g->remap_failure = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "retired")) g->retired = atoi(v);
        else if (!strcmp(k, "retired_sbe")) g->retired_sbe = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "retired_dbe")) g->retired_dbe = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "retired_pending")) g->retired_pending = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "mig_mode")) g->mig_mode = atoi(v);
        else if (!strcmp(k, "gpm")) g->gpm = atoi(v);
    }
    cfg->ngpus++;
}

static void parse_mig(struct fake_config *cfg, char **tok, int n) {
    if (n < 2 || cfg->nmigs >= MAX_GPUS * MAX_MIG) return;
    struct fake_mig *m = &cfg->migs[cfg->nmigs];
    memset(m, 0, sizeof *m);
    m->gpu = (unsigned)strtoul(tok[1], 0, 10);
    snprintf(m->uuid, sizeof m->uuid, "MIG-00000000-0000-0000-0000-%012u", cfg->nmigs);
    snprintf(m->profile, sizeof m->profile, "1g.10gb");
    m->gi = 1;
    for (int i = 2; i < n; i++) {
        char *eq = strchr(tok[i], '=');
        if (!eq) continue;
        *eq = '\0';
        const char *k = tok[i], *v = eq + 1;
        if (!strcmp(k, "uuid")) snprintf(m->uuid, sizeof m->uuid, "%s", v);
        else if (!strcmp(k, "profile")) snprintf(m->profile, sizeof m->profile, "%s", v);
        else if (!strcmp(k, "gi")) m->gi = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "ci")) m->ci = (unsigned)strtoul(v, 0, 10);
        else if (!strcmp(k, "mem_total")) m->mem_total = strtoull(v, 0, 10);
        else if (!strcmp(k, "mem_used")) m->mem_used = strtoull(v, 0, 10);
        else if (!strcmp(k, "util")) m->util = (unsigned)strtoul(v, 0, 10);
    }
    cfg->nmigs++;
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
    p->sampled = 1;
    for (int i = 2; i < n; i++) {
        char *eq = strchr(tok[i], '=');
        if (!eq) continue;
        *eq = '\0';
        const char *value = eq + 1;
        unsigned v = (unsigned)strtoul(value, 0, 10);
        if (!strcmp(tok[i], "pid")) p->pid = v;
        else if (!strcmp(tok[i], "sm")) {
            p->sm = v;
            p->sampled = strcmp(value, "none") != 0;
        } else if (!strcmp(tok[i], "mem")) p->mem = v;
        else if (!strcmp(tok[i], "used_mib"))
            p->used_bytes = strcmp(value, "na") ? strtoull(value, 0, 10) << 20 : NVML_VALUE_NOT_AVAILABLE_ULL;
        else if (!strcmp(tok[i], "kind"))
            p->kind = !strcmp(value, "graphics") ? KIND_GRAPHICS : !strcmp(value, "mps") ? KIND_MPS : KIND_COMPUTE;
    }
}

/*
 * Errors and delays may name a GPU before its "gpu" line, so faults are kept
 * in the fixed-size array and "gpu" lines only fill in identity and values.
 */
static void parse_config(struct fake_config *cfg, char *text) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->driver, sizeof cfg->driver, "550.54.14");
    cfg->cuda = 12040;
    char *saveptr = NULL;
    for (char *line = strtok_r(text, "\n", &saveptr); line; line = strtok_r(NULL, "\n", &saveptr)) {
        char *tok[128];
        int n = tokenize(line, tok, 128);
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
        } else if (!strcmp(tok[0], "mig")) {
            parse_mig(cfg, tok, n);
        } else if (!strcmp(tok[0], "driver") && n > 1) {
            snprintf(cfg->driver, sizeof cfg->driver, "%s", tok[1]);
        } else if (!strcmp(tok[0], "xid") && n > 2 && cfg->nxids < MAX_XIDS) {
            cfg->xids[cfg->nxids].gpu = (unsigned)strtoul(tok[1], 0, 10);
            cfg->xids[cfg->nxids].code = strtoull(tok[2], 0, 10);
            cfg->nxids++;
        } else if (!strcmp(tok[0], "cuda") && n > 1) {
            cfg->cuda = atoi(tok[1]);
        } else if (!strcmp(tok[0], "init_error") && n > 1) {
            cfg->init_error = error_code(tok[1]);
        }
    }
}

/* Re-reads the config file if it changed. Call with LOCK held. */
static void reload_locked(void) {
    static struct timespec last_check;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long since_ms = (now.tv_sec - last_check.tv_sec) * 1000LL + (now.tv_nsec - last_check.tv_nsec) / 1000000;
    if (LOADED_SIZE != -1 && since_ms >= 0 && since_ms < 100) return;
    last_check = now;
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

static int is_mig_handle(nvmlDevice_t device) {
    return device >= MIG_DEVICES && device < MIG_DEVICES + MAX_GPUS * MAX_MIG;
}

/* The "mig" line of slot `slot` of GPU `gpu`, or NULL. Call with LOCK held. */
static const struct fake_mig *mig_slot_locked(unsigned gpu, unsigned slot) {
    unsigned seen = 0;
    for (unsigned i = 0; i < CONFIG.nmigs; i++)
        if (CONFIG.migs[i].gpu == gpu && seen++ == slot) return &CONFIG.migs[i];
    return NULL;
}

/*
 * A MIG handle's state for a call: its parent's copy (for the name and
 * faults) and its own. NOT_FOUND once a reconfiguration removed it.
 */
static nvmlReturn_t enter_mig(nvmlDevice_t device, struct fake_gpu *parent, struct fake_mig *out) {
    unsigned pos = (unsigned)(device - MIG_DEVICES);
    nvmlDevice_t parent_handle = &DEVICES[pos / MAX_MIG];
    parent_handle->index = pos / MAX_MIG;
    nvmlReturn_t err = enter(parent_handle, CALL_MIG, parent);
    if (err) return err;
    pthread_mutex_lock(&LOCK);
    const struct fake_mig *m = parent->mig_mode == 1 ? mig_slot_locked(pos / MAX_MIG, pos % MAX_MIG) : NULL;
    if (m) *out = *m;
    pthread_mutex_unlock(&LOCK);
    return m ? NVML_SUCCESS : NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_MIG, &gpu);
    if (err) return err;
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu.mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    *current = *pending = (unsigned)gpu.mig_mode;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_MIG, &gpu);
    if (err) return err;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu.mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    *count = MAX_MIG;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index, nvmlDevice_t *mig) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_MIG, &gpu);
    if (err) return err;
    if (!mig || index >= MAX_MIG) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu.mig_mode < 0) return NVML_ERROR_NOT_SUPPORTED;
    if (gpu.mig_mode == 0) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&LOCK);
    int found = mig_slot_locked(device->index, index) != NULL;
    pthread_mutex_unlock(&LOCK);
    if (!found) return NVML_ERROR_NOT_FOUND;
    *mig = &MIG_DEVICES[device->index * MAX_MIG + index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *is_mig) {
    if (!is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = (unsigned)is_mig_handle(device);
    return NVML_SUCCESS;
}

/* A MIG handle's GPU instance ID, or with `compute` its compute instance ID. */
static nvmlReturn_t mig_instance_id(nvmlDevice_t device, unsigned int *id, int compute) {
    if (!is_mig_handle(device)) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_gpu gpu;
    struct fake_mig mig;
    nvmlReturn_t err = enter_mig(device, &gpu, &mig);
    if (err) return err;
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    *id = compute ? mig.ci : mig.gi;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    return mig_instance_id(device, id, 0);
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    return mig_instance_id(device, id, 1);
}

/* GPM. The layouts are NVML's (nvml.h, NVML_GPM_METRICS_GET_VERSION 1). */
typedef struct {
    unsigned int version;
    unsigned int isSupportedDevice;
} nvmlGpmSupport_t;

struct fake_gpm_sample {
    int taken;
    unsigned int gpu, gi;
    double t;    /* seconds, monotonic */
    double busy; /* the instance's util integrated over time, percent-seconds */
};
typedef struct fake_gpm_sample *nvmlGpmSample_t;

typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    struct {
        char *shortName;
        char *longName;
        char *unit;
    } metricInfo;
} nvmlGpmMetric_t;

typedef struct {
    unsigned int version;
    unsigned int numMetrics;
    nvmlGpmSample_t sample1;
    nvmlGpmSample_t sample2;
    nvmlGpmMetric_t metrics[210];
} nvmlGpmMetricsGet_t;

enum { NVML_GPM_METRIC_GRAPHICS_UTIL = 1 };

/* Per GPU instance: its util integrated up to `t`, and the util since. */
static struct {
    unsigned int gpu, gi, util;
    double t, busy;
    int used;
} GPM_INTEGRALS[MAX_GPUS * MAX_MIG];

static double monotonic_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *support) {
    if (!support || support->version != 1) return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_GPM, &gpu);
    if (err) return err;
    support->isSupportedDevice = gpu.gpm ? 1 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample) {
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    *sample = calloc(1, sizeof **sample);
    return *sample ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample) {
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    free(sample);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t sample) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_GPM, &gpu);
    if (err) return err;
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    /* Whole-GPU GPM is not faked: the agent reads it only for MIG. */
    return NVML_ERROR_NOT_SUPPORTED;
}

nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t device, unsigned int gpu_instance, nvmlGpmSample_t sample) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_GPM, &gpu);
    if (err) return err;
    if (!sample) return NVML_ERROR_INVALID_ARGUMENT;
    if (!gpu.gpm) return NVML_ERROR_NOT_SUPPORTED;
    if (gpu.mig_mode != 1) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned index = device->index;
    pthread_mutex_lock(&LOCK);
    const struct fake_mig *m = NULL;
    for (unsigned i = 0; i < CONFIG.nmigs && !m; i++)
        if (CONFIG.migs[i].gpu == index && CONFIG.migs[i].gi == gpu_instance) m = &CONFIG.migs[i];
    if (!m) {
        pthread_mutex_unlock(&LOCK);
        return NVML_ERROR_NOT_FOUND;
    }
    double now = monotonic_seconds();
    int slot = -1;
    for (int i = 0; i < MAX_GPUS * MAX_MIG; i++) {
        if (GPM_INTEGRALS[i].used && GPM_INTEGRALS[i].gpu == index && GPM_INTEGRALS[i].gi == gpu_instance) {
            slot = i;
            break;
        }
        if (!GPM_INTEGRALS[i].used && slot < 0) slot = i;
    }
    if (slot < 0) {
        pthread_mutex_unlock(&LOCK);
        return NVML_ERROR_UNKNOWN;
    }
    if (!GPM_INTEGRALS[slot].used) {
        GPM_INTEGRALS[slot].used = 1;
        GPM_INTEGRALS[slot].gpu = index;
        GPM_INTEGRALS[slot].gi = gpu_instance;
        GPM_INTEGRALS[slot].t = now;
        GPM_INTEGRALS[slot].busy = 0;
    }
    GPM_INTEGRALS[slot].busy += GPM_INTEGRALS[slot].util * (now - GPM_INTEGRALS[slot].t);
    GPM_INTEGRALS[slot].t = now;
    GPM_INTEGRALS[slot].util = m->util;
    sample->taken = 1;
    sample->gpu = index;
    sample->gi = gpu_instance;
    sample->t = now;
    sample->busy = GPM_INTEGRALS[slot].busy;
    pthread_mutex_unlock(&LOCK);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *request) {
    if (!request || request->version != 1 || request->numMetrics > 210) return NVML_ERROR_INVALID_ARGUMENT;
    const struct fake_gpm_sample *a = request->sample1, *b = request->sample2;
    if (!a || !b || !a->taken || !b->taken || a->gpu != b->gpu || a->gi != b->gi || b->t <= a->t)
        return NVML_ERROR_INVALID_ARGUMENT;
    static char short_name[] = "gr_util", long_name[] = "graphics utilization", unit[] = "%";
    for (unsigned i = 0; i < request->numMetrics; i++) {
        nvmlGpmMetric_t *metric = &request->metrics[i];
        if (metric->metricId == NVML_GPM_METRIC_GRAPHICS_UTIL) {
            metric->nvmlReturn = NVML_SUCCESS;
            metric->value = (b->busy - a->busy) / (b->t - a->t);
            metric->metricInfo.shortName = short_name;
            metric->metricInfo.longName = long_name;
            metric->metricInfo.unit = unit;
        } else {
            metric->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    return NVML_SUCCESS;
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
    if (is_mig_handle(device)) {
        struct fake_mig mig;
        nvmlReturn_t err = enter_mig(device, &gpu, &mig);
        if (err) return err;
        if (!name || length == 0) return NVML_ERROR_INVALID_ARGUMENT;
        snprintf(name, length, "%s MIG %s", gpu.name, mig.profile);
        return NVML_SUCCESS;
    }
    nvmlReturn_t err = enter(device, CALL_NAME, &gpu);
    if (err) return err;
    if (!name || length == 0) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(name, length, "%s", gpu.name);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    struct fake_gpu gpu;
    if (is_mig_handle(device)) {
        struct fake_mig mig;
        nvmlReturn_t err = enter_mig(device, &gpu, &mig);
        if (err) return err;
        if (!uuid || length == 0) return NVML_ERROR_INVALID_ARGUMENT;
        snprintf(uuid, length, "%s", mig.uuid);
        return NVML_SUCCESS;
    }
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
    /* NVML checks the struct version; nvml-wrapper sets NVML_STRUCT_VERSION(Memory, 2). */
    if (!memory || memory->version != ((unsigned)sizeof(nvmlMemory_v2_t) | (2u << 24)))
        return NVML_ERROR_INVALID_ARGUMENT;
    if (is_mig_handle(device)) {
        struct fake_mig mig;
        nvmlReturn_t err = enter_mig(device, &gpu, &mig);
        if (err) return err;
        memory->total = mig.mem_total;
        memory->used = mig.mem_used;
        memory->reserved = 0;
        memory->free = mig.mem_total > mig.mem_used ? mig.mem_total - mig.mem_used : 0;
        return NVML_SUCCESS;
    }
    nvmlReturn_t err = enter(device, CALL_MEMORY, &gpu);
    if (err) return err;
    memory->total = gpu.mem_total;
    memory->used = gpu.mem_used;
    memory->reserved = gpu.mem_reserved;
    memory->free = gpu.mem_total > gpu.mem_used ? gpu.mem_total - gpu.mem_used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_UTILIZATION, &gpu);
    if (err) return err;
    if (!utilization) return NVML_ERROR_INVALID_ARGUMENT;
    /* As NVML: a GPU in MIG mode has no device-wide utilization. */
    if (gpu.mig_mode == 1) return NVML_ERROR_NOT_SUPPORTED;
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

static unsigned long long now_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (unsigned long long)tv.tv_sec * 1000000ULL + (unsigned long long)tv.tv_usec;
}

/* Clock type 2 is NVML_CLOCK_MEM; the graphics, SM and video clocks report the SM clock. */
nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *clock) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_CLOCK, &gpu);
    if (err) return err;
    if (!clock || type < 0 || type > 3) return NVML_ERROR_INVALID_ARGUMENT;
    *clock = type == 2 ? gpu.mem_clock_mhz : gpu.sm_clock_mhz;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    pthread_mutex_lock(&LOCK);
    reload_locked();
    int cuda = CONFIG.cuda;
    pthread_mutex_unlock(&LOCK);
    if (!cuda) return NVML_ERROR_NOT_SUPPORTED;
    *version = cuda;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_PCI, &gpu);
    if (err) return err;
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busId, sizeof pci->busId, "%s", gpu.pci_bus_id);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%.15s", gpu.pci_bus_id + 4);
    unsigned domain = 0, bus = 0, dev = 0;
    sscanf(gpu.pci_bus_id, "%x:%x:%x", &domain, &bus, &dev);
    pci->domain = domain;
    pci->bus = bus;
    pci->device = dev;
    pci->pciDeviceId = 0x268410DE;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_ENERGY, &gpu);
    if (err) return err;
    if (!energy) return NVML_ERROR_INVALID_ARGUMENT;
    *energy = gpu.energy_mj;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t device, unsigned int *value) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_PCIE, &gpu);
    if (err) return err;
    if (!value) return NVML_ERROR_INVALID_ARGUMENT;
    *value = gpu.pcie_replay;
    return NVML_SUCCESS;
}

/* Counter 0 is NVML_PCIE_UTIL_TX_BYTES, 1 NVML_PCIE_UTIL_RX_BYTES; KB/s. */
nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, int counter, unsigned int *value) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_PCIE, &gpu);
    if (err) return err;
    if (!value || counter < 0 || counter > 1) return NVML_ERROR_INVALID_ARGUMENT;
    *value = counter == 0 ? gpu.pcie_tx_kbs : gpu.pcie_rx_kbs;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t device, unsigned int *util, unsigned int *period_us) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_CODEC, &gpu);
    if (err) return err;
    if (!util || !period_us) return NVML_ERROR_INVALID_ARGUMENT;
    *util = gpu.enc_util;
    *period_us = 167000;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t device, unsigned int *util, unsigned int *period_us) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_CODEC, &gpu);
    if (err) return err;
    if (!util || !period_us) return NVML_ERROR_INVALID_ARGUMENT;
    *util = gpu.dec_util;
    *period_us = 167000;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned int fan, unsigned int *speed) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_FAN, &gpu);
    if (err) return err;
    if (!speed || fan != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *speed = gpu.fan;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t device, int *pstate) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_PSTATE, &gpu);
    if (err) return err;
    if (!pstate) return NVML_ERROR_INVALID_ARGUMENT;
    *pstate = (int)gpu.pstate;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device, unsigned long long *reasons) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_CLOCK_EVENTS, &gpu);
    if (err) return err;
    if (!reasons) return NVML_ERROR_INVALID_ARGUMENT;
    *reasons = gpu.clock_events;
    return NVML_SUCCESS;
}

/* The older name of the same call. */
nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device, unsigned long long *reasons) {
    return nvmlDeviceGetCurrentClocksEventReasons(device, reasons);
}

/* Policy 0 is NVML_PERF_POLICY_POWER, 1 THERMAL; the others report 0 ns. */
nvmlReturn_t nvmlDeviceGetViolationStatus(nvmlDevice_t device, int policy, nvmlViolationTime_t *time) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_VIOLATION, &gpu);
    if (err) return err;
    if (!time || policy < 0 || policy > 11) return NVML_ERROR_INVALID_ARGUMENT;
    time->referenceTime = now_us();
    time->violationTime = policy == 0 ? gpu.viol_power_ns : policy == 1 ? gpu.viol_thermal_ns : 0;
    return NVML_SUCCESS;
}

/* Field 82 is NVML_FI_DEV_MEMORY_TEMP; any other field is NOT_SUPPORTED. */
nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int count, nvmlFieldValue_t *values) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_FIELDS, &gpu);
    if (err) return err;
    if (!values || count < 0) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < count; i++) {
        values[i].timestamp = (long long)now_us();
        values[i].latencyUsec = 0;
        if (values[i].fieldId == 82 && gpu.mem_temp >= 0) {
            values[i].valueType = 1; /* NVML_VALUE_TYPE_UNSIGNED_INT */
            values[i].value.uiVal = (unsigned)gpu.mem_temp;
            values[i].nvmlReturn = NVML_SUCCESS;
        } else {
            values[i].nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_POWER_LIMIT, &gpu);
    if (err) return err;
    if (!limit) return NVML_ERROR_INVALID_ARGUMENT;
    *limit = gpu.power_limit_mw;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t device, int *current, int *pending) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_ECC, &gpu);
    if (err) return err;
    if (!gpu.ecc) return NVML_ERROR_NOT_SUPPORTED;
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    *current = 1;
    *pending = 1;
    return NVML_SUCCESS;
}

/* Error type 0 corrected, 1 uncorrected; counter 0 volatile, 1 aggregate. */
nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int error_type, int counter, unsigned long long *count) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_ECC, &gpu);
    if (err) return err;
    if (!gpu.ecc) return NVML_ERROR_NOT_SUPPORTED;
    if (!count || error_type < 0 || error_type > 1 || counter < 0 || counter > 1) return NVML_ERROR_INVALID_ARGUMENT;
    *count = error_type == 0 ? (counter == 0 ? gpu.ecc_sbe_vol : gpu.ecc_sbe_agg)
                             : (counter == 0 ? gpu.ecc_dbe_vol : gpu.ecc_dbe_agg);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corr, unsigned int *unc,
                                       unsigned int *pending, unsigned int *failure) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_REMAP, &gpu);
    if (err) return err;
    if (!gpu.remap) return NVML_ERROR_NOT_SUPPORTED;
    if (!corr || !unc || !pending || !failure) return NVML_ERROR_INVALID_ARGUMENT;
    *corr = gpu.remap_corr;
    *unc = gpu.remap_unc;
    *pending = gpu.remap_pending;
    *failure = gpu.remap_failure;
    return NVML_SUCCESS;
}

/* Cause 0 is multiple single-bit errors, 1 a double-bit error. */
static unsigned retired_count(const struct fake_gpu *gpu, int cause) {
    return cause == 0 ? gpu->retired_sbe : gpu->retired_dbe;
}

nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t device, int cause, unsigned int *count,
                                       unsigned long long *addresses) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_RETIRED, &gpu);
    if (err) return err;
    if (!gpu.retired) return NVML_ERROR_NOT_SUPPORTED;
    if (!count || cause < 0 || cause > 1) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned n = retired_count(&gpu, cause);
    if (!addresses || *count < n) {
        unsigned asked = *count;
        *count = n;
        return asked == 0 && n == 0 ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned i = 0; i < n; i++) addresses[i] = 0x1000ULL * (i + 1);
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPages_v2(nvmlDevice_t device, int cause, unsigned int *count,
                                          unsigned long long *addresses, unsigned long long *timestamps) {
    nvmlReturn_t err = nvmlDeviceGetRetiredPages(device, cause, count, addresses);
    if (err == NVML_SUCCESS && timestamps)
        for (unsigned i = 0; i < *count; i++) timestamps[i] = now_us();
    return err;
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, int *pending) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_RETIRED, &gpu);
    if (err) return err;
    if (!gpu.retired) return NVML_ERROR_NOT_SUPPORTED;
    if (!pending) return NVML_ERROR_INVALID_ARGUMENT;
    *pending = (int)gpu.retired_pending;
    return NVML_SUCCESS;
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
    unsigned sampled = 0;
    for (unsigned i = 0; i < gpu.nprocs; i++) sampled += gpu.procs[i].sampled;
    if (sampled == 0 || ts <= lastSeenTimeStamp) {
        *count = 0;
        return NVML_ERROR_NOT_FOUND;
    }
    if (!samples || *count < sampled) {
        *count = sampled;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned k = 0;
    for (unsigned i = 0; i < gpu.nprocs; i++) {
        if (!gpu.procs[i].sampled) continue;
        samples[k].pid = gpu.procs[i].pid;
        samples[k].timeStamp = ts;
        samples[k].smUtil = gpu.procs[i].sm;
        samples[k].memUtil = gpu.procs[i].mem;
        samples[k].encUtil = 0;
        samples[k].decUtil = 0;
        k++;
    }
    *count = sampled;
    return NVML_SUCCESS;
}

/*
 * The running-process lists (the _v3 symbols). Like NVML: a NULL buffer or
 * a short count asks for the count (INSUFFICIENT_SIZE, or SUCCESS with 0
 * when there is none).
 */
static nvmlReturn_t running(nvmlDevice_t device, enum call call, enum process_kind kind, unsigned int *count,
                            nvmlProcessInfo_t *infos) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, call, &gpu);
    if (err) return err;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned n = 0;
    for (unsigned i = 0; i < gpu.nprocs; i++) n += gpu.procs[i].kind == kind;
    if (n == 0) {
        *count = 0;
        return NVML_SUCCESS;
    }
    if (!infos || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned k = 0;
    for (unsigned i = 0; i < gpu.nprocs; i++) {
        if (gpu.procs[i].kind != kind) continue;
        infos[k].pid = gpu.procs[i].pid;
        infos[k].usedGpuMemory = gpu.procs[i].used_bytes;
        infos[k].gpuInstanceId = 0xFFFFFFFF;
        infos[k].computeInstanceId = 0xFFFFFFFF;
        k++;
    }
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    return running(device, CALL_RUNNING, KIND_COMPUTE, count, infos);
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                      nvmlProcessInfo_t *infos) {
    return running(device, CALL_RUNNING, KIND_GRAPHICS, count, infos);
}

nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                        nvmlProcessInfo_t *infos) {
    return running(device, CALL_MPS, KIND_MPS, count, infos);
}

/* Events: a set is a mask of registered GPUs; XIDs are delivered in order. */
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

struct fake_event_set {
    unsigned long long registered; /* one bit per GPU index */
};
typedef struct fake_event_set *nvmlEventSet_t;

static unsigned int XIDS_DELIVERED;

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    if (!set) return NVML_ERROR_INVALID_ARGUMENT;
    *set = calloc(1, sizeof **set);
    return *set ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    free(set);
    return NVML_SUCCESS;
}

/* 0x8 is nvmlEventTypeXidCriticalError, the only type the fake knows. */
nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types, nvmlEventSet_t set) {
    struct fake_gpu gpu;
    nvmlReturn_t err = enter(device, CALL_EVENTS, &gpu);
    if (err) return err;
    if (!set || types != 0x8) return NVML_ERROR_NOT_SUPPORTED;
    set->registered |= 1ULL << device->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms) {
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned waited = 0;; waited += 250) {
        pthread_mutex_lock(&LOCK);
        reload_locked();
        while (XIDS_DELIVERED < CONFIG.nxids) {
            unsigned i = XIDS_DELIVERED++;
            unsigned gpu = CONFIG.xids[i].gpu;
            if (gpu < MAX_GPUS && (set->registered >> gpu & 1)) {
                DEVICES[gpu].index = gpu;
                data->device = &DEVICES[gpu];
                data->eventType = 0x8;
                data->eventData = CONFIG.xids[i].code;
                data->gpuInstanceId = 0xFFFFFFFF;
                data->computeInstanceId = 0xFFFFFFFF;
                pthread_mutex_unlock(&LOCK);
                return NVML_SUCCESS;
            }
        }
        pthread_mutex_unlock(&LOCK);
        if (waited >= timeout_ms) return NVML_ERROR_TIMEOUT;
        sleep_ms(250);
    }
}
