/*
 * tinybayes from C: classify the ten embedded MNIST test digits with the posterior predictive
 * and print each answer with its uncertainty, as the Rust demos do (`cargo demo` on the
 * Cortex-M4F, `cargo demo-m0` on the micro:bit), bit for bit: the same model, seeds, modes and
 * engine give the same bits, and scripts/compare-c-example.py checks it.
 *
 * Every float is printed twice: rounded to four decimals, and as its exact IEEE-754 bits
 * (fixed-point models: the exact unsigned Q16 integers). Exits with status 0 when every call
 * succeeded.
 */
#include <stddef.h>
#include <stdint.h>

#include "board.h"
#include "tinybayes.h"

/* From assets.S: the model (8-byte aligned) and 10 labels followed by 10 images of 28x28. */
extern const uint8_t model_bytes[];
extern const uint32_t model_len;
extern const uint8_t mnist_first10[];

#define IMAGE_COUNT 10u
#define IMAGE_LEN (28u * 28u)
/* Image i is predicted with a generator seeded with SEED_BASE + i, as in the Rust demos. */
#define SEED_BASE 0x7b00u
#define SAMPLES 32u

/* CHUNK and WORKSPACE_BYTES come from the Makefile, per board. */
static tb_engine engine;
static uint64_t workspace[WORKSPACE_BYTES / 8u];

/* --- output without a C library --- */

static char line[192];
static size_t line_len;

static void put(const char *text) {
    while (*text != '\0' && line_len + 1u < sizeof line) {
        line[line_len++] = *text++;
    }
}

static void put_u64(uint64_t value) {
    char digits[21];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10u);
        value /= 10u;
    } while (value != 0u);
    char text[21];
    for (int i = 0; i < n; i++) {
        text[i] = digits[n - 1 - i];
    }
    text[n] = '\0';
    put(text);
}

static void put_hex(uint32_t value) {
    static const char hex[] = "0123456789abcdef";
    char text[9];
    for (int i = 0; i < 8; i++) {
        text[i] = hex[(value >> (28 - 4 * i)) & 0xFu];
    }
    text[8] = '\0';
    put(text);
}

/* A non-negative float with four decimals (the values printed are probabilities and
 * entropies, between 0 and a few nats). */
static void put_decimal(float value) {
    uint32_t scaled = (uint32_t)(value * 10000.0f + 0.5f);
    put_u64(scaled / 10000u);
    put(".");
    char fraction[5];
    for (int i = 3; i >= 0; i--) {
        fraction[i] = (char)('0' + scaled % 10u);
        scaled /= 10u;
    }
    fraction[4] = '\0';
    put(fraction);
}

static uint32_t float_bits(float value) {
    union {
        float f;
        uint32_t u;
    } bits = {value};
    return bits.u;
}

/* " name=0.1234 (bits)": the float's bits, or the fixed-point result's Q16 integer. */
static void put_value(const char *name, float value, uint32_t uq16, int fixed_point) {
    put(" ");
    put(name);
    put("=");
    put_decimal(value);
    put(fixed_point ? " (uq16 " : " (f32 0x");
    if (fixed_point) {
        put_u64(uq16);
    } else {
        put_hex(float_bits(value));
    }
    put(")");
}

static void flush(void) {
    put("\n");
    line[line_len] = '\0';
    board_print(line);
    line_len = 0;
}

/* Prints the failing call and its status; returns 0 so that main can return it. */
static int failed(const char *call, tb_status status) {
    put(call);
    put(" failed: ");
    put(tb_status_name(status));
    flush();
    return 1;
}

static void put_answer(const tb_result *r, int with_expected_entropy) {
    put(" predicted ");
    put_u64(r->predicted_class);
    int fixed = r->fixed_point != 0u;
    uint32_t c = r->predicted_class;
    put_value("p", r->probabilities[c], r->probabilities_uq16[c], fixed);
    put_value("H", r->predictive_entropy, r->predictive_entropy_uq16, fixed);
    if (with_expected_entropy) {
        put_value("EH", r->expected_entropy, r->expected_entropy_uq16, fixed);
    }
    put_value("MI", r->mutual_information, r->mutual_information_uq16, fixed);
}

int main(void) {
    put("tinybayes C example on ");
    put(board_name);
    put(", C ABI version ");
    put_u64(tb_abi_version());
    flush();

    if (tb_abi_version() != TB_ABI_VERSION || tb_engine_size() != sizeof(tb_engine)) {
        put("tinybayes.h does not belong to the library linked: rebuild both");
        flush();
        return 1;
    }
    tb_mode monte_carlo = {TB_MODE_MONTE_CARLO, SAMPLES};
    tb_mode moments_then_sample = {TB_MODE_MOMENTS_THEN_SAMPLE, SAMPLES};

    size_t needed = 0;
    tb_status status = tb_workspace_size(model_bytes, model_len, CHUNK, monte_carlo, &needed);
    if (status != TB_STATUS_OK) {
        return failed("tb_workspace_size", status);
    }
    if (needed > sizeof workspace) {
        put("the model needs ");
        put_u64(needed);
        put(" bytes of workspace at chunk ");
        put_u64(CHUNK);
        put(", WORKSPACE_BYTES is ");
        put_u64(sizeof workspace);
        flush();
    }
    status = tb_engine_init(&engine, model_bytes, model_len, CHUNK, workspace, sizeof workspace);
    if (status != TB_STATUS_OK) {
        return failed("tb_engine_init", status);
    }
    tb_engine_info info;
    status = tb_engine_get_info(&engine, &info);
    if (status != TB_STATUS_OK) {
        return failed("tb_engine_get_info", status);
    }
    static const char *const precisions[] = {"f32", "q8", "q16"};
    put("model: ");
    put(precisions[info.precision < 3u ? info.precision : 0u]);
    put(", ");
    put_u64(info.layer_count);
    put(" layers, ");
    put_u64(info.model_bytes);
    put(" bytes; chunk ");
    put_u64(info.chunk);
    put(", ");
    put_u64(info.workspace_bytes);
    put(" bytes of workspace (tb_workspace_size: ");
    put_u64(needed);
    put("), tb_engine ");
    put_u64(sizeof engine);
    put(" bytes; ");
    put_u64(SAMPLES);
    put(" Monte Carlo samples per image");
    flush();

    /* Moment propagation runs on f32 models only: the fixed-point demo has no such line. */
    int with_moments = info.precision == 0u;
    unsigned correct = 0;
    for (uint32_t i = 0; i < IMAGE_COUNT; i++) {
        const uint8_t label = mnist_first10[i];
        const uint8_t *pixels = mnist_first10 + IMAGE_COUNT + i * IMAGE_LEN;
        tb_rng rng;
        tb_rng_seed(&rng, SEED_BASE + i);
        tb_result result;
        tb_result_init(&result);

        uint64_t start = board_instructions();
        status = tb_predict_u8(&engine, pixels, IMAGE_LEN, monte_carlo, &rng, &result);
        uint64_t cost = board_instructions() - start;
        if (status != TB_STATUS_OK) {
            return failed("tb_predict_u8", status);
        }
        correct += result.predicted_class == label;
        put("image ");
        put_u64(i);
        put(": label ");
        put_u64(label);
        put(" ->");
        put_answer(&result, 1);
        put(" [");
        put_u64(cost);
        put(" instructions]");
        flush();

        if (with_moments) {
            /* The same generator, continued, as the Rust demo does. */
            start = board_instructions();
            status = tb_predict_u8(&engine, pixels, IMAGE_LEN, moments_then_sample, &rng, &result);
            cost = board_instructions() - start;
            if (status != TB_STATUS_OK) {
                return failed("tb_predict_u8 (moments)", status);
            }
            put("  by moment propagation:");
            put_answer(&result, 0);
            put(" [");
            put_u64(cost);
            put(" instructions]");
            flush();
        }
    }
    put("done: ");
    put_u64(correct);
    put("/");
    put_u64(IMAGE_COUNT);
    put(" correct; RAM: tb_engine ");
    put_u64(sizeof engine);
    put(" bytes, workspace ");
    put_u64(info.workspace_bytes);
    put(", stack at most ");
    put_u64(board_stack_peak());
    put(" bytes");
    flush();
    if (board_stack_overflowed()) {
        put("the stack overflowed into the static data: give it more RAM");
        flush();
        return 1;
    }
    return 0;
}
