/*
 * api_test.c: the C API under bad input and concurrency, as a C program sees it.
 *
 *   api_test HYBRID.gguf LLAMA.gguf SCRATCH_DIR
 *
 * HYBRID is a model without plain attention (the cheems fixture), LLAMA one with a KV cache and a
 * ChatML template (the llama fixture); SCRATCH_DIR is a writable directory for state files and
 * broken model files. Every check prints on failure; the last line is "N passed, N failed" and
 * the exit status is 0 only when nothing failed. The process must survive every bad call.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cheems.h"

static int passed = 0, failed = 0;

#define CHECK(cond, ...)                                             \
    do {                                                             \
        if (cond) {                                                  \
            passed++;                                                \
        } else {                                                     \
            failed++;                                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);     \
            fprintf(stderr, __VA_ARGS__);                            \
            fprintf(stderr, "\n  last error: %s\n", cheems_last_error()); \
        }                                                            \
    } while (0)

/* A call that must return `want`. */
#define EXPECT(call, want)                                                           \
    do {                                                                             \
        cheems_status got_ = (call);                                                 \
        CHECK(got_ == (want), "%s\n  returned %s, expected %s", #call,               \
              cheems_status_str(got_), cheems_status_str(want));                     \
    } while (0)

static const char *hybrid_path, *llama_path, *scratch;

static char *path_in_scratch(const char *name) {
    static char buf[4][4096];
    static int i = 0;
    char *p = buf[i++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", scratch, name);
    return p;
}

static int write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = fwrite(data, 1, len, f);
    fclose(f);
    return n == len ? 0 : -1;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n > 0 ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* Collects streamed text; cancels after `stop_after` pieces when that is positive. */
typedef struct {
    char text[16384];
    size_t len;
    int pieces;
    int stop_after;
    cheems_session *reenter; /* a session to call back into from the callback */
    cheems_status reenter_status;
} collector;

static int collect(const char *text, size_t len, void *user_data) {
    collector *c = user_data;
    if (c->len + len < sizeof c->text) {
        memcpy(c->text + c->len, text, len);
        c->len += len;
        c->text[c->len] = '\0';
    }
    if (text[len] != '\0') return 1; /* the text must be NUL-terminated */
    c->pieces++;
    if (c->reenter) {
        uint32_t t = 1;
        c->reenter_status = cheems_prefill(c->reenter, &t, 1, NULL, 0);
        c->reenter = NULL;
    }
    return c->stop_after > 0 && c->pieces >= c->stop_after;
}

static cheems_generate_params fixed_params(uint32_t max_tokens) {
    cheems_generate_params gp = cheems_generate_default_params();
    gp.sampling.temperature = 0.9f;
    gp.sampling.seed = 1234;
    gp.max_tokens = max_tokens;
    gp.ignore_eos = true; /* random fixture weights: go the whole way */
    return gp;
}

static cheems_session *new_session(cheems_model *m, uint32_t n_ctx) {
    cheems_session_params sp = cheems_session_default_params();
    sp.n_threads = 1;
    sp.n_ctx = n_ctx;
    cheems_session *s = NULL;
    EXPECT(cheems_session_new(m, &sp, &s), CHEEMS_OK);
    return s;
}

/* The session's state as bytes (malloc'd), to compare before and after a failed call. */
static unsigned char *state_of(cheems_session *s, size_t *len) {
    size_t n = 0;
    EXPECT(cheems_session_state_save(s, NULL, 0, &n), CHEEMS_ERR_BUFFER_TOO_SMALL);
    unsigned char *b = malloc(n);
    EXPECT(cheems_session_state_save(s, b, n, len), CHEEMS_OK);
    CHECK(*len == n, "state size %zu, then %zu", n, *len);
    return b;
}

static void expect_unchanged(cheems_session *s, const unsigned char *before, size_t before_len,
                             const char *what) {
    size_t len;
    unsigned char *now = state_of(s, &len);
    CHECK(len == before_len && memcmp(now, before, len) == 0, "%s changed the session", what);
    free(now);
}

static void test_static_strings(void) {
    CHECK(cheems_version() && strlen(cheems_version()) >= 5, "version");
    for (int c = 0; c <= 15; c++) CHECK(strncmp(cheems_status_str(c), "CHEEMS_", 7) == 0, "status %d", c);
    CHECK(strcmp(cheems_status_str(999), "unknown status") == 0, "unknown status");
    CHECK(strcmp(cheems_status_str(-1), "unknown status") == 0, "negative status");
    CHECK(cheems_last_error() != NULL, "last error never NULL");
}

static void test_null_pointers(cheems_model *m) {
    cheems_model *out = (cheems_model *)&out; /* must be overwritten with NULL */
    EXPECT(cheems_model_load(NULL, NULL, &out), CHEEMS_ERR_NULL_ARG);
    CHECK(out == NULL, "out_model not cleared on failure");
    CHECK(strstr(cheems_last_error(), "path") != NULL, "the message names the argument: %s", cheems_last_error());
    EXPECT(cheems_model_load(hybrid_path, NULL, NULL), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_model_get_info(NULL, NULL), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_model_get_info(m, NULL), CHEEMS_ERR_NULL_ARG);
    cheems_session *s = NULL;
    EXPECT(cheems_session_new(NULL, NULL, &s), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_session_new(m, NULL, NULL), CHEEMS_ERR_NULL_ARG);
    size_t n;
    uint32_t toks[8];
    EXPECT(cheems_tokenize(m, NULL, true, toks, 8, &n), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_tokenize(m, "hi", true, NULL, 8, &n), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_tokenize(m, "hi", true, toks, 8, NULL), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_detokenize(m, NULL, 3, NULL, 0, &n), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_prefill(NULL, toks, 1, NULL, 0), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_decode(NULL, 1, NULL, 0), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_generate(NULL, "x", NULL, NULL, NULL, NULL), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_chat(NULL, NULL, 0, NULL, NULL, NULL, NULL), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_session_reset(NULL), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_session_state_load(NULL, NULL, 0), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_sampler_new(NULL, NULL), CHEEMS_ERR_NULL_ARG);
    /* free(NULL) is a no-op. */
    EXPECT(cheems_model_free(NULL), CHEEMS_OK);
    EXPECT(cheems_session_free(NULL), CHEEMS_OK);
    EXPECT(cheems_sampler_free(NULL), CHEEMS_OK);

    s = new_session(m, 0);
    EXPECT(cheems_prefill(s, NULL, 2, NULL, 0), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_prefill(s, toks, 0, NULL, 0), CHEEMS_ERR_INVALID_ARG);
    EXPECT(cheems_generate(s, NULL, NULL, NULL, NULL, NULL), CHEEMS_ERR_NULL_ARG);
    cheems_chat_message bad = {"user", NULL};
    EXPECT(cheems_chat(s, &bad, 1, NULL, NULL, NULL, NULL), CHEEMS_ERR_NULL_ARG);
    CHECK(strstr(cheems_last_error(), "messages[0].content") != NULL, "%s", cheems_last_error());
    EXPECT(cheems_chat(s, NULL, 0, NULL, NULL, NULL, NULL), CHEEMS_ERR_INVALID_ARG);
    EXPECT(cheems_session_state_save_file(s, NULL), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_session_state_load_file(s, NULL), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_session_n_past(s, NULL), CHEEMS_ERR_NULL_ARG);
    EXPECT(cheems_session_free(s), CHEEMS_OK);
}

static void test_bad_files(void) {
    cheems_model *m = NULL;
    EXPECT(cheems_model_load(path_in_scratch("no-such-model.gguf"), NULL, &m), CHEEMS_ERR_IO);
    CHECK(m == NULL, "no model on failure");
    CHECK(strstr(cheems_last_error(), "no-such-model.gguf") != NULL, "names the file: %s", cheems_last_error());
    EXPECT(cheems_model_load(scratch, NULL, &m), CHEEMS_ERR_IO); /* a directory */
    EXPECT(cheems_model_load("", NULL, &m), CHEEMS_ERR_INVALID_ARG);

    const char *garbage = "this is not a GGUF file, just some text that is long enough\n";
    const char *g = path_in_scratch("garbage.gguf");
    CHECK(write_file(g, garbage, strlen(garbage)) == 0, "write %s", g);
    EXPECT(cheems_model_load(g, NULL, &m), CHEEMS_ERR_FORMAT);
    const char *empty = path_in_scratch("empty.gguf");
    CHECK(write_file(empty, "", 0) == 0, "write %s", empty);
    EXPECT(cheems_model_load(empty, NULL, &m), CHEEMS_ERR_FORMAT);

    /* A real model cut in half, and one with its header bytes flipped. */
    size_t len = 0;
    unsigned char *bytes = read_file(hybrid_path, &len);
    CHECK(bytes != NULL && len > 1024, "read %s", hybrid_path);
    if (!bytes) return;
    const char *cut = path_in_scratch("truncated.gguf");
    CHECK(write_file(cut, bytes, len / 2) == 0, "write %s", cut);
    EXPECT(cheems_model_load(cut, NULL, &m), CHEEMS_ERR_FORMAT);
    cheems_model_params mp = cheems_model_default_params();
    mp.use_mmap = false;
    EXPECT(cheems_model_load(cut, &mp, &m), CHEEMS_ERR_FORMAT);
    for (size_t i = 8; i < 64; i++) bytes[i] ^= 0x5A; /* tensor and key counts */
    const char *flipped = path_in_scratch("flipped.gguf");
    CHECK(write_file(flipped, bytes, len) == 0, "write %s", flipped);
    EXPECT(cheems_model_load(flipped, NULL, &m), CHEEMS_ERR_FORMAT);
    CHECK(m == NULL, "no model on failure");
    free(bytes);
}

static void test_tokens(cheems_model *m, const cheems_model_info *info) {
    uint32_t toks[64];
    size_t n = 0;
    EXPECT(cheems_tokenize(m, "Hello world", false, NULL, 0, &n), CHEEMS_ERR_BUFFER_TOO_SMALL);
    CHECK(n > 0, "count of tokens: %zu", n);
    size_t need = n;
    EXPECT(cheems_tokenize(m, "Hello world", false, toks, 64, &n), CHEEMS_OK);
    CHECK(n == need, "same count");
    char text[256];
    size_t len = 0;
    EXPECT(cheems_detokenize(m, toks, n, text, sizeof text, &len), CHEEMS_OK);
    CHECK(strcmp(text, "Hello world") == 0 && len == strlen(text), "round trip: '%s'", text);
    EXPECT(cheems_detokenize(m, toks, n, text, 3, &len), CHEEMS_ERR_BUFFER_TOO_SMALL);
    CHECK(len == strlen("Hello world"), "needed length %zu", len);
    uint32_t bad = info->n_vocab;
    EXPECT(cheems_detokenize(m, &bad, 1, text, sizeof text, &len), CHEEMS_ERR_INVALID_TOKEN);
    EXPECT(cheems_token_piece(m, bad, text, sizeof text, &len), CHEEMS_ERR_INVALID_TOKEN);
    bool stop = false;
    EXPECT(cheems_token_is_stop(m, bad, &stop), CHEEMS_ERR_INVALID_TOKEN);
    if (info->eos_token >= 0) {
        EXPECT(cheems_token_is_stop(m, (uint32_t)info->eos_token, &stop), CHEEMS_OK);
        CHECK(stop, "eos stops");
    }
    const char not_utf8[] = {'a', (char)0xff, 'b', 0};
    EXPECT(cheems_tokenize(m, not_utf8, false, toks, 64, &n), CHEEMS_ERR_INVALID_ARG);
}

static void test_invalid_tokens_leave_the_session_unchanged(cheems_model *m, const cheems_model_info *info) {
    cheems_session *s = new_session(m, 0);
    uint32_t prompt[] = {3, 4, 5, 6};
    float *logits = malloc(info->n_vocab * sizeof(float));
    EXPECT(cheems_session_logits(s, logits, info->n_vocab), CHEEMS_ERR_INVALID_ARG); /* none yet */
    EXPECT(cheems_prefill(s, prompt, 4, logits, info->n_vocab), CHEEMS_OK);
    size_t len;
    unsigned char *before = state_of(s, &len);
    uint32_t bad[] = {7, info->n_vocab, 8};
    EXPECT(cheems_prefill(s, bad, 3, NULL, 0), CHEEMS_ERR_INVALID_TOKEN);
    CHECK(strstr(cheems_last_error(), "outside the vocabulary") != NULL, "%s", cheems_last_error());
    EXPECT(cheems_decode(s, 0xFFFFFFFFu, NULL, 0), CHEEMS_ERR_INVALID_TOKEN);
    EXPECT(cheems_decode(s, 7, logits, info->n_vocab - 1), CHEEMS_ERR_BUFFER_TOO_SMALL);
    cheems_generate_params gp = fixed_params(4);
    gp.sampling.top_p = 2.0f;
    EXPECT(cheems_generate(s, "more", &gp, NULL, NULL, NULL), CHEEMS_ERR_INVALID_ARG);
    expect_unchanged(s, before, len, "failed prefill/decode/generate");
    uint64_t past = 0;
    EXPECT(cheems_session_n_past(s, &past), CHEEMS_OK);
    CHECK(past == 4, "n_past %llu", (unsigned long long)past);
    /* The logits are those after the prompt, and decoding goes on from there. */
    float *again = malloc(info->n_vocab * sizeof(float));
    EXPECT(cheems_session_logits(s, again, info->n_vocab), CHEEMS_OK);
    CHECK(memcmp(logits, again, info->n_vocab * sizeof(float)) == 0, "logits kept");
    EXPECT(cheems_decode(s, 7, logits, info->n_vocab), CHEEMS_OK);
    free(again);
    free(before);
    free(logits);
    EXPECT(cheems_session_free(s), CHEEMS_OK);
}

static void test_double_free_guard(cheems_model *shared) {
    cheems_model *m = NULL;
    EXPECT(cheems_model_load(hybrid_path, NULL, &m), CHEEMS_OK);
    cheems_session *s = new_session(m, 0);
    /* The model can go first: the session holds it. */
    EXPECT(cheems_model_free(m), CHEEMS_OK);
    EXPECT(cheems_model_free(m), CHEEMS_ERR_INVALID_HANDLE);
    cheems_model_info info;
    EXPECT(cheems_model_get_info(m, &info), CHEEMS_ERR_INVALID_HANDLE);
    EXPECT(cheems_generate(s, "Still here", NULL, NULL, NULL, NULL), CHEEMS_OK);
    EXPECT(cheems_session_free(s), CHEEMS_OK);
    EXPECT(cheems_session_free(s), CHEEMS_ERR_INVALID_HANDLE);
    CHECK(strstr(cheems_last_error(), "nothing was freed") != NULL, "%s", cheems_last_error());
    EXPECT(cheems_session_reset(s), CHEEMS_ERR_INVALID_HANDLE);
    EXPECT(cheems_decode(s, 1, NULL, 0), CHEEMS_ERR_INVALID_HANDLE);
    /* A handle of the wrong kind, and a pointer cheems never made. */
    EXPECT(cheems_session_free((cheems_session *)shared), CHEEMS_ERR_INVALID_HANDLE);
    EXPECT(cheems_model_get_info(shared, &info), CHEEMS_OK);
    int local = 0;
    EXPECT(cheems_model_free((cheems_model *)&local), CHEEMS_ERR_INVALID_HANDLE);

    cheems_sampler *sm = NULL;
    EXPECT(cheems_sampler_new(NULL, &sm), CHEEMS_OK);
    EXPECT(cheems_sampler_free(sm), CHEEMS_OK);
    EXPECT(cheems_sampler_free(sm), CHEEMS_ERR_INVALID_HANDLE);
}

static void test_cancellation(cheems_model *m) {
    cheems_session *s = new_session(m, 0);
    cheems_generate_params gp = fixed_params(40);
    collector c = {0};
    c.stop_after = 3;
    cheems_generate_result res;
    EXPECT(cheems_generate(s, "Once upon a time", &gp, collect, &c, &res), CHEEMS_CANCELLED);
    CHECK(c.pieces == 3, "the callback ran %d times after cancelling", c.pieces);
    CHECK(res.stop_reason == CHEEMS_STOP_CANCELLED, "stop reason %d", (int)res.stop_reason);
    CHECK(res.n_generated >= 3 && res.n_generated < 40, "generated %u", res.n_generated);
    /* What was streamed stays in the session, which goes on working. */
    uint64_t past = 0;
    EXPECT(cheems_session_n_past(s, &past), CHEEMS_OK);
    CHECK(past == res.n_prompt_tokens + res.n_generated, "n_past %llu", (unsigned long long)past);
    collector more = {0};
    EXPECT(cheems_generate(s, "", &gp, collect, &more, &res), CHEEMS_OK);
    CHECK(res.n_generated == 40 && res.n_prompt_tokens == 0, "continued: %u", res.n_generated);

    /* A callback calling back into its own session is refused, not a deadlock. */
    collector re = {0};
    re.reenter = s;
    re.stop_after = 1;
    EXPECT(cheems_generate(s, " and", &gp, collect, &re, &res), CHEEMS_CANCELLED);
    CHECK(re.reenter_status == CHEEMS_ERR_BUSY, "re-entry gave %s", cheems_status_str(re.reenter_status));
    EXPECT(cheems_session_free(s), CHEEMS_OK);
}

static void test_state(cheems_model *m) {
    cheems_session *a = new_session(m, 0);
    cheems_generate_params gp = fixed_params(12);
    EXPECT(cheems_generate(a, "The quick brown fox", &gp, NULL, NULL, NULL), CHEEMS_OK);
    size_t len;
    unsigned char *saved = state_of(a, &len);
    const char *file = path_in_scratch("a.state");
    EXPECT(cheems_session_state_save_file(a, file), CHEEMS_OK);
    collector first = {0}, second = {0}, third = {0};
    EXPECT(cheems_generate(a, " jumps", &gp, collect, &first, NULL), CHEEMS_OK);
    /* Back to the saved state, in memory and from the file, in another session too. */
    EXPECT(cheems_session_state_load(a, saved, len), CHEEMS_OK);
    EXPECT(cheems_generate(a, " jumps", &gp, collect, &second, NULL), CHEEMS_OK);
    CHECK(strcmp(first.text, second.text) == 0, "restored from memory: '%s' vs '%s'", first.text, second.text);
    cheems_session *b = new_session(m, 0);
    EXPECT(cheems_session_state_load_file(b, file), CHEEMS_OK);
    EXPECT(cheems_generate(b, " jumps", &gp, collect, &third, NULL), CHEEMS_OK);
    CHECK(strcmp(first.text, third.text) == 0, "restored from a file: '%s' vs '%s'", first.text, third.text);

    /* Refused states leave the session unchanged. */
    unsigned char *before = state_of(b, &len);
    EXPECT(cheems_session_state_load(b, saved, 10), CHEEMS_ERR_STATE);
    unsigned char junk[64] = "CHEEMSST but then nothing that makes sense";
    EXPECT(cheems_session_state_load(b, junk, sizeof junk), CHEEMS_ERR_STATE);
    EXPECT(cheems_session_state_load_file(b, path_in_scratch("missing.state")), CHEEMS_ERR_IO);
    EXPECT(cheems_session_state_load_file(b, hybrid_path), CHEEMS_ERR_STATE);
    size_t small = 0;
    EXPECT(cheems_session_state_save(b, junk, sizeof junk, &small), CHEEMS_ERR_BUFFER_TOO_SMALL);
    CHECK(small == len, "needed %zu", small);
    expect_unchanged(b, before, len, "refused states");
    free(before);

    /* A state of another model is refused. */
    cheems_model *other = NULL;
    EXPECT(cheems_model_load(llama_path, NULL, &other), CHEEMS_OK);
    cheems_session *o = new_session(other, 0);
    EXPECT(cheems_session_state_load_file(o, file), CHEEMS_ERR_STATE);
    CHECK(strstr(cheems_last_error(), "different model") != NULL, "%s", cheems_last_error());
    EXPECT(cheems_session_free(o), CHEEMS_OK);
    EXPECT(cheems_model_free(other), CHEEMS_OK);
    free(saved);
    EXPECT(cheems_session_free(a), CHEEMS_OK);
    EXPECT(cheems_session_free(b), CHEEMS_OK);
}

static void test_context_full(void) {
    cheems_model *m = NULL;
    EXPECT(cheems_model_load(llama_path, NULL, &m), CHEEMS_OK);
    cheems_session *s = new_session(m, 8);
    uint32_t toks[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    EXPECT(cheems_prefill(s, toks, 9, NULL, 0), CHEEMS_ERR_CONTEXT_FULL);
    EXPECT(cheems_prefill(s, toks, 6, NULL, 0), CHEEMS_OK);
    EXPECT(cheems_prefill(s, toks, 3, NULL, 0), CHEEMS_ERR_CONTEXT_FULL);
    cheems_generate_params gp = fixed_params(10);
    cheems_generate_result res;
    EXPECT(cheems_generate(s, "", &gp, NULL, NULL, &res), CHEEMS_OK);
    CHECK(res.stop_reason == CHEEMS_STOP_CONTEXT_FULL && res.n_generated == 2,
          "stop %d after %u", (int)res.stop_reason, res.n_generated);
    EXPECT(cheems_session_free(s), CHEEMS_OK);
    EXPECT(cheems_model_free(m), CHEEMS_OK);
}

static void test_chat(void) {
    cheems_model *m = NULL;
    EXPECT(cheems_model_load(llama_path, NULL, &m), CHEEMS_OK);
    cheems_model_info info;
    EXPECT(cheems_model_get_info(m, &info), CHEEMS_OK);
    CHECK(info.has_chat_template, "the llama fixture has a ChatML template");
    cheems_session *s = new_session(m, 512);
    cheems_generate_params gp = fixed_params(8);
    collector r1 = {0}, r2 = {0}, whole = {0};
    cheems_chat_message conv[3] = {{"user", "Hello there"}, {"assistant", ""}, {"user", "And again?"}};
    cheems_generate_result first, second, fresh;
    EXPECT(cheems_chat(s, conv, 1, &gp, collect, &r1, &first), CHEEMS_OK);
    conv[1].content = r1.text;
    EXPECT(cheems_chat(s, conv, 3, &gp, collect, &r2, &second), CHEEMS_OK);
    /* The second turn read only what was new; a fresh session reads it all and says the same. */
    cheems_session *f = new_session(m, 512);
    EXPECT(cheems_chat(f, conv, 3, &gp, collect, &whole, &fresh), CHEEMS_OK);
    CHECK(second.n_prompt_tokens < fresh.n_prompt_tokens, "turn 2 read %u tokens, the whole %u; reply 1 '%s'",
          second.n_prompt_tokens, fresh.n_prompt_tokens, r1.text);
    uint64_t past = 0;
    EXPECT(cheems_session_n_past(s, &past), CHEEMS_OK);
    CHECK(past == first.n_prompt_tokens + first.n_generated + second.n_prompt_tokens + second.n_generated,
          "the session holds both turns: %llu", (unsigned long long)past);
    CHECK(r2.len > 0 && whole.len > 0, "replies");
    /* Another conversation does not continue this one: the session starts over. */
    cheems_chat_message other[1] = {{"user", "Something else"}};
    EXPECT(cheems_chat(s, other, 1, &gp, NULL, NULL, &second), CHEEMS_OK);
    EXPECT(cheems_session_n_past(s, &past), CHEEMS_OK);
    CHECK(past == second.n_prompt_tokens + second.n_generated, "restarted: %llu", (unsigned long long)past);
    cheems_chat_message bad_role[1] = {{"user", "\xff"}};
    EXPECT(cheems_chat(s, bad_role, 1, &gp, NULL, NULL, NULL), CHEEMS_ERR_INVALID_ARG);
    EXPECT(cheems_session_free(f), CHEEMS_OK);
    EXPECT(cheems_session_free(s), CHEEMS_OK);
    EXPECT(cheems_model_free(m), CHEEMS_OK);
}

/* Two threads, each with its own session on one model. */
typedef struct {
    cheems_model *model;
    const char *prompt;
    collector out;
    cheems_status status;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    cheems_session_params sp = cheems_session_default_params();
    sp.n_threads = 1;
    cheems_session *s = NULL;
    j->status = cheems_session_new(j->model, &sp, &s);
    if (j->status != CHEEMS_OK) return NULL;
    cheems_generate_params gp = fixed_params(32);
    j->status = cheems_generate(s, j->prompt, &gp, collect, &j->out, NULL);
    cheems_status st = cheems_session_free(s);
    if (j->status == CHEEMS_OK) j->status = st;
    return NULL;
}

static void test_threads(cheems_model *m) {
    const char *prompts[2] = {"In a hole in the ground", "It was a bright cold day"};
    job seq[2], par[2];
    for (int i = 0; i < 2; i++) {
        memset(&seq[i], 0, sizeof seq[i]);
        seq[i].model = m;
        seq[i].prompt = prompts[i];
        run_job(&seq[i]);
        EXPECT(seq[i].status, CHEEMS_OK);
        par[i] = seq[i];
        memset(&par[i].out, 0, sizeof par[i].out);
        par[i].status = CHEEMS_ERR_INTERNAL;
    }
    pthread_t t[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, run_job, &par[i]) == 0, "thread %d", i);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        EXPECT(par[i].status, CHEEMS_OK);
        CHECK(seq[i].out.len > 0, "generated text");
        CHECK(strcmp(seq[i].out.text, par[i].out.text) == 0, "thread %d: '%s' vs sequential '%s'", i,
              par[i].out.text, seq[i].out.text);
    }
    CHECK(strcmp(seq[0].out.text, seq[1].out.text) != 0, "different prompts, different text");
}

static void test_sampler(const cheems_model_info *info) {
    cheems_sampler *sm = NULL;
    cheems_sampling_params p = cheems_sampling_default_params();
    p.temperature = 0.0f;
    EXPECT(cheems_sampler_new(&p, &sm), CHEEMS_OK);
    float logits[5] = {0.1f, 3.0f, 2.0f, -1.0f, 0.0f};
    uint32_t t = 99;
    EXPECT(cheems_sampler_sample(sm, logits, 5, &t), CHEEMS_OK);
    CHECK(t == 1, "greedy picks the argmax: %u", t);
    EXPECT(cheems_sampler_sample(sm, logits, 0, &t), CHEEMS_ERR_INVALID_ARG);
    EXPECT(cheems_sampler_accept(sm, 1), CHEEMS_OK);
    EXPECT(cheems_sampler_free(sm), CHEEMS_OK);
    p.temperature = -1.0f;
    EXPECT(cheems_sampler_new(&p, &sm), CHEEMS_ERR_INVALID_ARG);
    CHECK(sm == NULL, "no sampler on failure");
    (void)info;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s HYBRID.gguf LLAMA.gguf SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    hybrid_path = argv[1];
    llama_path = argv[2];
    scratch = argv[3];

    test_static_strings();
    test_bad_files();
    cheems_model *m = NULL;
    cheems_model_params mp = cheems_model_default_params();
    mp.n_threads = 1;
    EXPECT(cheems_model_load(hybrid_path, &mp, &m), CHEEMS_OK);
    if (!m) {
        fprintf(stderr, "cannot go on without %s\n", hybrid_path);
        return 1;
    }
    cheems_model_info info;
    EXPECT(cheems_model_get_info(m, &info), CHEEMS_OK);
    CHECK(strcmp(info.architecture, "cheems") == 0, "architecture %s", info.architecture);
    CHECK(info.n_vocab > 0 && info.n_layers > 0 && info.has_tokenizer, "info");

    test_null_pointers(m);
    test_tokens(m, &info);
    test_invalid_tokens_leave_the_session_unchanged(m, &info);
    test_double_free_guard(m);
    test_cancellation(m);
    test_state(m);
    test_context_full();
    test_chat();
    test_threads(m);
    test_sampler(&info);

    EXPECT(cheems_model_free(m), CHEEMS_OK);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
