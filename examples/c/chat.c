/*
 * chat.c: a small interactive chat over a cheems model, through the model's chat template.
 *
 *   ./chat [MODEL.gguf] [-s "system prompt"] [-n max_tokens] [-t temperature] [--seed N]
 *
 * Without a model path it uses the default model (cheems_default_model_path: $CHEEMS_MODEL, or
 * models/cheems-default.gguf). Type a message and press Enter; the reply streams as it is
 * generated. Ctrl-C stops a reply (the streaming callback returns non-zero); /reset starts a new
 * conversation; /quit or end of input leaves. Input need not be a terminal: `printf 'Hi\n' |
 * ./chat model.gguf` answers one message per line.
 *
 * Each turn passes the whole conversation to cheems_chat; the session remembers what it has
 * already read, so only the new message is processed.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cheems.h"

static volatile sig_atomic_t interrupted = 0;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* A growing string: the reply being streamed. */
typedef struct {
    char *data;
    size_t len, cap;
} text_buf;

static int append(text_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static int on_text(const char *text, size_t len, void *user_data) {
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    if (append((text_buf *)user_data, text, len) != 0) return 1; /* out of memory: stop */
    return interrupted ? 1 : 0; /* non-zero cancels the reply */
}

/* The conversation: roles and contents owned by this program. */
typedef struct {
    cheems_chat_message *msgs;
    size_t n, cap;
} conversation;

static int push(conversation *c, const char *role, const char *content, size_t len) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 16;
        cheems_chat_message *m = realloc(c->msgs, cap * sizeof *m);
        if (!m) return -1;
        c->msgs = m;
        c->cap = cap;
    }
    char *text = malloc(len + 1);
    if (!text) return -1;
    memcpy(text, content, len);
    text[len] = '\0';
    c->msgs[c->n].role = role; /* string literals */
    c->msgs[c->n].content = text;
    c->n++;
    return 0;
}

static void clear(conversation *c, size_t keep) {
    while (c->n > keep) free((char *)c->msgs[--c->n].content);
}

static int fail(cheems_status st, const char *what) {
    fprintf(stderr, "%s: %s\n  %s\n", what, cheems_status_str(st), cheems_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *path = NULL, *system_prompt = NULL;
    cheems_generate_params gp = cheems_generate_default_params();
    gp.max_tokens = 512;
    gp.sampling.temperature = 0.7f;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-s") && i + 1 < argc) system_prompt = argv[++i];
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) gp.max_tokens = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) gp.sampling.temperature = (float)atof(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) gp.sampling.seed = strtoull(argv[++i], NULL, 10);
        else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: %s [MODEL.gguf] [-s system] [-n max_tokens] [-t temp] [--seed N]\n", argv[0]);
            return 2;
        } else path = argv[i];
    }

    char default_path[4096];
    cheems_status st;
    if (!path) {
        st = cheems_default_model_path(default_path, sizeof default_path, NULL);
        if (st != CHEEMS_OK) return fail(st, "no model given and no default model");
        path = default_path;
    }

    int rc = 1;
    cheems_model *model = NULL;
    cheems_session *session = NULL;
    conversation conv = {0};
    text_buf reply = {0};
    char line[8192];

    st = cheems_model_load(path, NULL, &model);
    if (st != CHEEMS_OK) { fail(st, "load"); goto done; }
    cheems_model_info info;
    st = cheems_model_get_info(model, &info);
    if (st != CHEEMS_OK) { fail(st, "info"); goto done; }
    st = cheems_session_new(model, NULL, &session);
    if (st != CHEEMS_OK) { fail(st, "session"); goto done; }
    fprintf(stderr, "cheems %s: %s (%s, %u tokens, %s chat template). /reset, /quit, Ctrl-C stops a reply.\n",
            cheems_version(), path, info.architecture, info.n_vocab,
            info.has_chat_template ? "its" : "a plain fallback");

    signal(SIGINT, on_sigint);
    size_t keep = 0;
    if (system_prompt) {
        if (push(&conv, "system", system_prompt, strlen(system_prompt))) goto done;
        keep = 1;
    }
    for (;;) {
        fputs("> ", stdout);
        fflush(stdout);
        interrupted = 0;
        if (!fgets(line, sizeof line, stdin)) break;
        size_t n = strcspn(line, "\r\n");
        line[n] = '\0';
        if (n == 0) continue;
        if (!strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            clear(&conv, keep);
            st = cheems_session_reset(session);
            if (st != CHEEMS_OK) { fail(st, "reset"); goto done; }
            fputs("(new conversation)\n", stdout);
            continue;
        }
        if (push(&conv, "user", line, n)) goto done;
        reply.len = 0;
        cheems_generate_result res;
        st = cheems_chat(session, conv.msgs, conv.n, &gp, on_text, &reply, &res);
        fputs("\n", stdout);
        if (st == CHEEMS_CANCELLED) {
            fputs("(stopped)\n", stdout);
        } else if (st != CHEEMS_OK) {
            fail(st, "chat");
            clear(&conv, conv.n - 1); /* forget the message that failed */
            continue;
        }
        /* The reply exactly as streamed, so the next turn continues the session's state. */
        if (push(&conv, "assistant", reply.len ? reply.data : "", reply.len)) goto done;
    }
    rc = 0;

done:
    clear(&conv, 0);
    free(conv.msgs);
    free(reply.data);
    cheems_session_free(session);
    cheems_model_free(model);
    return rc;
}
