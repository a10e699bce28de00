/* Drives libincident_gate through its C ABI exactly as a C (or FFI) caller would, against the
 * committed header. tests/abi.rs compiles it, starts an openQA simulator and runs each mode:
 *
 *   abi_test bad-input   <config_json>
 *   abi_test queue-full  <config_json>    (openQA unreachable, queue_capacity small)
 *   abi_test happy       <config_json> <incident> <job_id>...
 *   abi_test fork        <config_json> <incident> <job_id>...
 *   abi_test secrets     <config_json> <incident> <job_id> <unreachable_config_json> <secret>...
 *   abi_test log         <config_json> <unusable_state_config_json> <incident> <job_id>...
 *   abi_test refused     <config_json> <unreachable_config_json> <incident>
 *
 * Every check prints "ok - ..." or "not ok - ..."; the exit code is the number of failures. */
#include "incident_gate.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (cond) {                                                                               \
            printf("ok - ");                                                                      \
        } else {                                                                                  \
            printf("not ok - ");                                                                  \
            failures++;                                                                           \
        }                                                                                         \
        printf(__VA_ARGS__);                                                                      \
        printf("\n");                                                                             \
        fflush(stdout);                                                                           \
    } while (0)

#define EXPECT_STATUS(call, want, what)                                                           \
    do {                                                                                          \
        ig_status got_ = (call);                                                                  \
        CHECK(got_ == (want), "%s: status %d (want %d) last_error=\"%s\"", what, (int)got_,      \
              (int)(want), ig_last_error());                                                      \
    } while (0)

static ig_gate *make_gate(const char *config) {
    ig_gate *gate = NULL;
    ig_status st = ig_gate_new(config, &gate);
    CHECK(st == IG_OK && gate != NULL, "ig_gate_new: status %d (%s)", (int)st, ig_last_error());
    return gate;
}

static void bad_input(const char *config) {
    ig_gate *gate = NULL;
    EXPECT_STATUS(ig_gate_new(NULL, &gate), IG_NULL_ARGUMENT, "new(NULL config)");
    CHECK(strstr(ig_last_error(), "config_json") != NULL, "the message names the argument: %s", ig_last_error());
    EXPECT_STATUS(ig_gate_new(config, NULL), IG_NULL_ARGUMENT, "new(NULL out)");
    EXPECT_STATUS(ig_gate_new("{\"openqa_url\":", &gate), IG_INVALID_JSON, "new(truncated JSON)");
    EXPECT_STATUS(ig_gate_new("[1,2]", &gate), IG_INVALID_CONFIG, "new(array)");
    EXPECT_STATUS(ig_gate_new("{\"settle_ms\":\"soon\"}", &gate), IG_INVALID_CONFIG, "new(wrong type)");
    CHECK(strstr(ig_last_error(), "settle_ms") != NULL, "the message names the key: %s", ig_last_error());
    EXPECT_STATUS(ig_gate_new("{\"no_such_key\":1}", &gate), IG_INVALID_CONFIG, "new(unknown key)");
    CHECK(strstr(ig_last_error(), "no_such_key") != NULL, "the message names the key: %s", ig_last_error());
    EXPECT_STATUS(ig_gate_new("{\"review_group\":\"\xff\xfe\"}", &gate), IG_INVALID_UTF8, "new(invalid UTF-8)");
    CHECK(gate == NULL, "no gate was handed out on failure");

    gate = make_gate(config);
    EXPECT_STATUS(ig_gate_submit(NULL, "openqa_job_done", "{\"id\":1}"), IG_NULL_ARGUMENT, "submit(NULL gate)");
    EXPECT_STATUS(ig_gate_submit(gate, NULL, "{\"id\":1}"), IG_NULL_ARGUMENT, "submit(NULL name)");
    EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_done", NULL), IG_NULL_ARGUMENT, "submit(NULL data)");
    EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_d\xc3\x28ne", "{}"), IG_INVALID_UTF8, "submit(invalid UTF-8 name)");
    EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_done", "{\"id\":\"\xc3\x28\"}"), IG_INVALID_UTF8,
                  "submit(invalid UTF-8 data)");
    EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_explode", "{\"id\":1}"), IG_UNKNOWN_EVENT, "submit(unknown event)");
    EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_done", "{\"id\":"), IG_INVALID_JSON, "submit(invalid JSON)");
    EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_done", "[1]"), IG_INVALID_EVENT, "submit(array data)");
    EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_done", "{\"id\":\"x\"}"), IG_INVALID_EVENT, "submit(id of wrong type)");
    EXPECT_STATUS(ig_gate_submit(gate, "openqa_comment_create", "{\"job_id\":3}"), IG_INVALID_EVENT,
                  "submit(comment without id)");
    char *out = NULL;
    EXPECT_STATUS(ig_gate_status(NULL, &out), IG_NULL_ARGUMENT, "status(NULL gate)");
    EXPECT_STATUS(ig_gate_status(gate, NULL), IG_NULL_ARGUMENT, "status(NULL out)");
    EXPECT_STATUS(ig_gate_evaluate(gate, 0, &out), IG_INVALID_ARGUMENT, "evaluate(incident 0)");
    EXPECT_STATUS(ig_gate_evaluate(gate, 1, NULL), IG_NULL_ARGUMENT, "evaluate(NULL out)");
    EXPECT_STATUS(ig_gate_flush(NULL, 10), IG_NULL_ARGUMENT, "flush(NULL gate)");
    EXPECT_STATUS(ig_gate_status(gate, &out), IG_OK, "status");
    CHECK(out && strstr(out, "\"unknown_event\":1") && strstr(out, "\"invalid_json\":1") &&
              strstr(out, "\"invalid_shape\":3"),
          "status counts rejections by reason: %s", out ? out : "(null)");
    ig_string_free(out);
    out = NULL;
    EXPECT_STATUS(ig_gate_incidents(NULL, "{}", &out), IG_NULL_ARGUMENT, "incidents(NULL gate)");
    EXPECT_STATUS(ig_gate_incidents(gate, NULL, &out), IG_NULL_ARGUMENT, "incidents(NULL query)");
    EXPECT_STATUS(ig_gate_incidents(gate, "{}", NULL), IG_NULL_ARGUMENT, "incidents(NULL out)");
    EXPECT_STATUS(ig_gate_incidents(gate, "{\"state\":", &out), IG_INVALID_JSON, "incidents(invalid JSON)");
    EXPECT_STATUS(ig_gate_incidents(gate, "{\"state\":1}", &out), IG_INVALID_ARGUMENT, "incidents(state of wrong type)");
    EXPECT_STATUS(ig_gate_incidents(gate, "{\"nope\":1}", &out), IG_INVALID_ARGUMENT, "incidents(unknown key)");
    CHECK(strstr(ig_last_error(), "nope") != NULL, "the message names the key: %s", ig_last_error());
    EXPECT_STATUS(ig_gate_incidents(gate, "{\"search\":\"\xc3\x28\"}", &out), IG_INVALID_UTF8, "incidents(invalid UTF-8)");
    EXPECT_STATUS(ig_gate_incidents(gate, "{}", &out), IG_OK, "incidents");
    CHECK(out && strstr(out, "\"incidents\":[]") && strstr(out, "\"total\":0"), "no incidents known yet: %s",
          out ? out : "(null)");
    ig_string_free(out);
    out = NULL;
    EXPECT_STATUS(ig_gate_metrics(NULL, &out), IG_NULL_ARGUMENT, "metrics(NULL gate)");
    EXPECT_STATUS(ig_gate_metrics(gate, NULL), IG_NULL_ARGUMENT, "metrics(NULL lines)");
    EXPECT_STATUS(ig_gate_metrics(gate, &out), IG_OK, "metrics");
    CHECK(out && strncmp(out, "incident_gate,url=", 18) == 0 && strstr(out, "evaluations=0i"),
          "metrics are incident_gate lines: %s", out ? out : "(null)");
    ig_string_free(out);
    ig_string_free(NULL);
    ig_gate_free(NULL);
    CHECK(strlen(ig_version()) > 0, "version %s", ig_version());
    ig_gate_free(gate);
}

static void queue_full(const char *config) {
    ig_gate *gate = make_gate(config);
    int full = 0, accepted = 0;
    for (int i = 1; i <= 50 && !full; i++) {
        char data[64];
        snprintf(data, sizeof data, "{\"id\":%d,\"result\":\"passed\"}", i);
        ig_status st = ig_gate_submit(gate, "openqa_job_done", data);
        if (st == IG_OK) accepted++;
        else if (st == IG_QUEUE_FULL) full = 1;
        else CHECK(0, "unexpected status %d: %s", (int)st, ig_last_error());
    }
    CHECK(full, "a full queue answers IG_QUEUE_FULL after %d accepted events", accepted);
    char *out = NULL;
    EXPECT_STATUS(ig_gate_status(gate, &out), IG_OK, "status");
    CHECK(out && strstr(out, "\"queue_full\":1") != NULL, "status counts the refused event: %s", out ? out : "");
    ig_string_free(out);
    EXPECT_STATUS(ig_gate_flush(gate, 50), IG_TIMEOUT, "flush times out while openQA is unreachable");
    ig_gate_free(gate);
}

/* Submits job_done for every job, flushes and checks the verdict. */
static void drive(ig_gate *gate, const char *who, unsigned long long incident, int njobs, char **jobs) {
    for (int i = 0; i < njobs; i++) {
        char data[96];
        snprintf(data, sizeof data, "{\"id\":%s,\"newbuild\":null,\"reason\":null,\"result\":\"passed\"}", jobs[i]);
        EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_done", data), IG_OK, "submit job_done");
    }
    EXPECT_STATUS(ig_gate_flush(gate, 20000), IG_OK, "flush");
    char *verdict = NULL;
    EXPECT_STATUS(ig_gate_evaluate(gate, incident, &verdict), IG_OK, "evaluate");
    CHECK(verdict && strstr(verdict, "\"result\":\"passed\""), "%s: verdict passed: %s", who, verdict ? verdict : "");
    ig_string_free(verdict);
    char *status = NULL;
    EXPECT_STATUS(ig_gate_status(gate, &status), IG_OK, "status");
    CHECK(status && strstr(status, "\"running\":true") && strstr(status, "\"result\":\"passed\""),
          "%s: status shows the engine running and the decision: %.300s", who, status ? status : "");
    ig_string_free(status);
    char query[96], *list = NULL, incident_key[64];
    snprintf(query, sizeof query, "{\"incident\":%llu}", incident);
    snprintf(incident_key, sizeof incident_key, "\"incident\":%llu,", incident);
    EXPECT_STATUS(ig_gate_incidents(gate, query, &list), IG_OK, "incidents");
    CHECK(list && strstr(list, incident_key) && strstr(list, "\"result\":\"passed\"") &&
              strstr(list, "\"decisions\":[{"),
          "%s: incidents lists the decided incident with its decisions: %.400s", who, list ? list : "");
    ig_string_free(list);
}

struct log_seen {
    pthread_t caller;
    int lines, foreign_thread, by_level[6];
    char error[512], info[4096];
};

static void on_log(void *userdata, ig_log_level level, const char *message) {
    struct log_seen *seen = userdata;
    seen->lines++;
    if (!pthread_equal(pthread_self(), seen->caller)) seen->foreign_thread++;
    if (level >= IG_LOG_ERROR && level <= IG_LOG_TRACE) seen->by_level[level]++;
    if (level == IG_LOG_ERROR) snprintf(seen->error, sizeof seen->error, "%s", message);
    if (level == IG_LOG_INFO && strlen(seen->info) + strlen(message) + 2 < sizeof seen->info) {
        strcat(seen->info, message);
        strcat(seen->info, "\n");
    }
}

/* The log callback gets the library's lines on the caller's thread only; an engine that cannot
 * start and the events it refused show in the log and in the status. */
static void log_mode(const char *config, const char *unusable, unsigned long long incident, int njobs, char **jobs) {
    struct log_seen seen = {.caller = pthread_self()};
    EXPECT_STATUS(ig_set_log_callback(on_log, &seen), IG_OK, "set_log_callback");
    ig_gate *broken = make_gate(unusable);
    EXPECT_STATUS(ig_gate_submit(broken, "openqa_job_done", "{\"id\":1,\"result\":\"passed\"}"), IG_UNAVAILABLE,
                  "submit to a gate whose engine cannot start");
    CHECK(strstr(ig_last_error(), "incident-gate.sqlite") != NULL, "the error names the file: %s", ig_last_error());
    CHECK(seen.by_level[IG_LOG_ERROR] == 1 && strstr(seen.error, "engine cannot start"),
          "the callback got the refused start as an error before submit returned: %s", seen.error);
    char *status = NULL;
    EXPECT_STATUS(ig_gate_status(broken, &status), IG_OK, "status");
    CHECK(status && strstr(status, "\"engine_start_failure\":{") && strstr(status, "\"engine_unavailable\":1") &&
              strstr(status, "\"last_refused\":{") && strstr(status, "\"why\":\"engine_unavailable\""),
          "status shows the refused start and the refused event: %.600s", status ? status : "");
    ig_string_free(status);
    ig_gate_free(broken);

    ig_gate *gate = make_gate(config);
    for (int i = 0; i < njobs; i++) {
        char data[96];
        snprintf(data, sizeof data, "{\"id\":%s,\"result\":\"passed\"}", jobs[i]);
        EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_done", data), IG_OK, "submit job_done");
    }
    EXPECT_STATUS(ig_gate_flush(gate, 20000), IG_OK, "flush");
    EXPECT_STATUS(ig_log_poll(), IG_OK, "log_poll");
    char decided[64];
    snprintf(decided, sizeof decided, "incident %llu: passed", incident);
    CHECK(strstr(seen.info, decided) != NULL, "the engine's decision reached the callback: %s", seen.info);
    CHECK(seen.lines > 1 && seen.foreign_thread == 0, "%d lines, %d of them on another thread", seen.lines,
          seen.foreign_thread);
    EXPECT_STATUS(ig_set_log_callback(NULL, NULL), IG_OK, "log back to stderr");
    int before = seen.lines;
    ig_gate_free(gate);
    CHECK(seen.lines == before, "no callback after it was removed");
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODE CONFIG_JSON [ARGS...]\n", argv[0]);
        return 100;
    }
    const char *mode = argv[1], *config = argv[2];
    if (strcmp(mode, "bad-input") == 0) {
        bad_input(config);
    } else if (strcmp(mode, "queue-full") == 0) {
        queue_full(config);
    } else if (strcmp(mode, "happy") == 0 && argc > 4) {
        ig_gate *gate = make_gate(config);
        drive(gate, "single process", strtoull(argv[3], NULL, 10), argc - 4, argv + 4);
        ig_gate_free(gate);
    } else if (strcmp(mode, "fork") == 0 && argc > 5) {
        /* The parent starts the engine, then forks: the child inherits a gate whose threads do not
         * exist in it, and must still work; so must the parent afterwards. */
        ig_gate *gate = make_gate(config);
        unsigned long long incident = strtoull(argv[3], NULL, 10);
        char *first[] = {argv[4]};
        drive(gate, "parent before fork", incident, 1, first);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            failures = 0;
            drive(gate, "forked child", incident, argc - 5, argv + 5);
            _exit(failures);
        }
        int wstatus = 0;
        waitpid(pid, &wstatus, 0);
        CHECK(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0, "the forked child succeeded (status %d)", wstatus);
        drive(gate, "parent after fork", incident, 1, first);
        ig_gate_free(gate);
    } else if (strcmp(mode, "secrets") == 0 && argc > 6) {
        /* The incident is decided and its deliveries fail (nothing listens where the broker and
         * IBS are configured): status, errors, verdict and log must still hold no secret.
         * argv[5] is a config whose openQA URL carries credentials and leads nowhere; the secrets
         * follow. */
        ig_gate *gate = make_gate(config);
        char data[96];
        snprintf(data, sizeof data, "{\"id\":%s,\"result\":\"passed\"}", argv[4]);
        EXPECT_STATUS(ig_gate_submit(gate, "openqa_job_done", data), IG_OK, "submit");
        EXPECT_STATUS(ig_gate_flush(gate, 10000), IG_OK, "flush");
        /* the outbox tries the broker and records why it failed: wait for that (IBS is reported
         * after the event) */
        char *status = NULL;
        ig_status st = IG_OK;
        for (int waited = 0; waited < 300; waited++) {
            ig_string_free(status);
            status = NULL;
            st = ig_gate_status(gate, &status);
            if (st != IG_OK || (status && strstr(status, "AMQP")))
                break;
            usleep(100000);
        }
        EXPECT_STATUS(st, IG_OK, "status");
        CHECK(status && strstr(status, "AMQP"), "status shows the failed AMQP delivery: %.400s", status ? status : "");
        for (int i = 6; i < argc; i++)
            CHECK(status && strstr(status, argv[i]) == NULL, "status does not contain secret #%d", i - 5);
        ig_string_free(status);
        char *verdict = NULL;
        EXPECT_STATUS(ig_gate_evaluate(gate, strtoull(argv[3], NULL, 10), &verdict), IG_OK, "evaluate");
        for (int i = 6; i < argc; i++)
            CHECK(!verdict || strstr(verdict, argv[i]) == NULL, "verdict does not contain secret #%d", i - 5);
        ig_string_free(verdict);
        ig_gate_free(gate);
        /* an error made from the configuration: openQA, reached through a URL with credentials,
         * does not answer */
        ig_gate *unreachable = make_gate(argv[5]);
        verdict = NULL;
        EXPECT_STATUS(ig_gate_evaluate(unreachable, strtoull(argv[3], NULL, 10), &verdict), IG_UNAVAILABLE,
                      "evaluate with openQA unreachable");
        const char *error = ig_last_error();
        CHECK(strstr(error, "GET /api/v1/") != NULL, "the error names the openQA route: %s", error);
        for (int i = 6; i < argc; i++)
            CHECK(strstr(error, argv[i]) == NULL, "that error does not contain secret #%d: %s", i - 5, error);
        ig_gate_free(unreachable);
        /* a refused configuration: the message names the key, never the URL holding the secret */
        for (int i = 6; i < argc; i++) {
            const char *keys[] = {"openqa_url", "amqp_url", "obs_url"};
            const char *schemes[] = {"http", "amqp", "https"};
            for (int k = 0; k < 3; k++) {
                char bad[512];
                snprintf(bad, sizeof bad, "{\"%s\":\"%s://gate:%s@127.0.0.1:99999/\"}", keys[k], schemes[k], argv[i]);
                ig_gate *refused = NULL;
                EXPECT_STATUS(ig_gate_new(bad, &refused), IG_INVALID_CONFIG, "new(a URL with a secret and a bad port)");
                error = ig_last_error();
                CHECK(strstr(error, keys[k]) != NULL && strstr(error, argv[i]) == NULL,
                      "the refusal names %s, not secret #%d: %s", keys[k], i - 5, error);
            }
        }
    } else if (strcmp(mode, "refused") == 0 && argc > 4) {
        /* openQA refuses a job of the incident (403): no verdict, and not "try again later" */
        ig_gate *gate = make_gate(config);
        char *verdict = NULL;
        EXPECT_STATUS(ig_gate_evaluate(gate, strtoull(argv[4], NULL, 10), &verdict), IG_OPENQA_REFUSED,
                      "evaluate (a job refused)");
        CHECK(verdict == NULL, "no verdict handed out");
        CHECK(strstr(ig_last_error(), "GET /api/v1/jobs?ids=") && strstr(ig_last_error(), "HTTP 403"),
              "the message names the route and the answer: %s", ig_last_error());
        EXPECT_STATUS(ig_gate_evaluate_submission(gate, argv[4], &verdict), IG_OPENQA_REFUSED,
                      "evaluate_submission (a job refused)");
        ig_gate_free(gate);
        ig_gate *unreachable = make_gate(argv[3]);
        EXPECT_STATUS(ig_gate_evaluate(unreachable, strtoull(argv[4], NULL, 10), &verdict), IG_UNAVAILABLE,
                      "evaluate (openQA unreachable)");
        ig_gate_free(unreachable);
    } else if (strcmp(mode, "log") == 0 && argc > 5) {
        log_mode(config, argv[3], strtoull(argv[4], NULL, 10), argc - 5, argv + 5);
    } else {
        fprintf(stderr, "unknown mode or missing arguments: %s\n", mode);
        return 100;
    }
    printf("# %d failure(s)\n", failures);
    return failures;
}
