/*
 * embed.c: the smallest useful cheems program. Load a model, generate a continuation of a
 * prompt (streamed to stdout), free everything.
 *
 *   ./embed MODEL.gguf ["prompt"] [max_tokens]
 *
 * Generation is greedy (temperature 0), so the output is the same on every run.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cheems.h"

static int print_text(const char *text, size_t len, void *user_data) {
    (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0; /* non-zero would stop generation */
}

static int check(cheems_status st, const char *what) {
    if (st != CHEEMS_OK) {
        fprintf(stderr, "%s: %s\n  %s\n", what, cheems_status_str(st), cheems_last_error());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [\"prompt\"] [max_tokens]\n", argv[0]);
        return 2;
    }
    const char *prompt = argc > 2 ? argv[2] : "Once upon a time";
    int rc = 1;
    cheems_model *model = NULL;
    cheems_session *session = NULL;

    cheems_model_params mp = cheems_model_default_params();
    mp.n_threads = 1;
    if (check(cheems_model_load(argv[1], &mp, &model), "load")) goto done;
    if (check(cheems_session_new(model, NULL, &session), "session")) goto done;

    cheems_generate_params gp = cheems_generate_default_params();
    gp.sampling.temperature = 0.0f;
    gp.max_tokens = argc > 3 ? (uint32_t)atoi(argv[3]) : 32;
    cheems_generate_result res;
    fputs(prompt, stdout);
    if (check(cheems_generate(session, prompt, &gp, print_text, NULL, &res), "generate")) goto done;
    printf("\n");
    fprintf(stderr, "cheems %s: %u prompt tokens, %u generated\n", cheems_version(),
            res.n_prompt_tokens, res.n_generated);
    rc = 0;

done:
    cheems_session_free(session);
    cheems_model_free(model);
    return rc;
}
