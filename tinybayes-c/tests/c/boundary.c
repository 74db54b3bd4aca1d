/*
 * The C API's boundary, exercised from C: every bad argument a C caller can pass gets its own
 * status code, and leaves the caller's memory as it was. Compiled by build.rs for the host
 * tests and called by tests/boundary.rs, which gives it the models; returns the number of
 * failed checks and describes the first ones in `report`.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tinybayes.h"

#define IMAGE_LEN 784u

static int failures;
static char *report_at;
static size_t report_left;

static void check(const char *what, tb_status got, tb_status expected) {
    if (got == expected) {
        return;
    }
    failures++;
    int n = snprintf(report_at, report_left, "%s: got %s, expected %s\n", what, tb_status_name(got),
                     tb_status_name(expected));
    if (n > 0 && (size_t)n < report_left) {
        report_at += n;
        report_left -= (size_t)n;
    }
}

static void check_true(const char *what, int condition) {
    check(what, condition ? TB_STATUS_OK : TB_STATUS_BAD_ARGUMENT, TB_STATUS_OK);
}

/* 8-byte aligned scratch copies of a model, for the misaligned, truncated and corrupted ones. */
static uint64_t copy[16384];
static uint64_t workspace[8192];
static uint64_t workspace_fixed[8192];
static uint64_t workspace_early_exit[1 << 16];

static void model_checks(const uint8_t *model, size_t len) {
    tb_engine engine;
    tb_mode mc = {TB_MODE_MONTE_CARLO, 8};
    size_t bytes = 0;

    check("NULL engine", tb_engine_init(NULL, model, len, 8, workspace, sizeof workspace),
          TB_STATUS_NULL_POINTER);
    check("NULL model", tb_engine_init(&engine, NULL, len, 8, workspace, sizeof workspace),
          TB_STATUS_NULL_POINTER);
    check("NULL workspace", tb_engine_init(&engine, model, len, 8, NULL, sizeof workspace),
          TB_STATUS_NULL_POINTER);
    check("NULL size output", tb_workspace_size(model, len, 8, mc, NULL), TB_STATUS_NULL_POINTER);
    check("model length past the address space",
          tb_engine_init(&engine, model, SIZE_MAX, 8, workspace, sizeof workspace),
          TB_STATUS_LENGTH_OVERFLOW);
    check("workspace length past the address space",
          tb_engine_init(&engine, model, len, 8, workspace, SIZE_MAX), TB_STATUS_LENGTH_OVERFLOW);

    uint8_t *bytes_copy = (uint8_t *)copy;
    memcpy(bytes_copy + 1, model, len);
    check("misaligned model", tb_engine_init(&engine, bytes_copy + 1, len, 8, workspace, sizeof workspace),
          TB_STATUS_MODEL_MISALIGNED);
    memcpy(bytes_copy, model, len);
    check("truncated model", tb_engine_init(&engine, bytes_copy, len - 4, 8, workspace, sizeof workspace),
          TB_STATUS_MODEL_LENGTH_MISMATCH);
    check("empty model", tb_engine_init(&engine, bytes_copy, 0, 8, workspace, sizeof workspace),
          TB_STATUS_MODEL_TOO_SHORT);
    bytes_copy[len / 2] ^= 0x40;
    check("corrupted model", tb_engine_init(&engine, bytes_copy, len, 8, workspace, sizeof workspace),
          TB_STATUS_MODEL_CRC_MISMATCH);
    memset(bytes_copy, 0, len);
    check("not a model", tb_engine_init(&engine, bytes_copy, len, 8, workspace, sizeof workspace),
          TB_STATUS_MODEL_BAD_MAGIC);

    check("chunk 3", tb_engine_init(&engine, model, len, 3, workspace, sizeof workspace),
          TB_STATUS_UNSUPPORTED_CHUNK);
    check("chunk 3 (size)", tb_workspace_size(model, len, 3, mc, &bytes), TB_STATUS_UNSUPPORTED_CHUNK);
    check("unknown mode (size)", tb_workspace_size(model, len, 8, (tb_mode){7, 8}, &bytes),
          TB_STATUS_BAD_ARGUMENT);
    check("workspace size", tb_workspace_size(model, len, 8, mc, &bytes), TB_STATUS_OK);
    check_true("workspace size is in bytes and fits the test's buffer", bytes > 0 && bytes <= sizeof workspace);
    check("short workspace", tb_engine_init(&engine, model, len, 8, workspace, bytes - 8),
          TB_STATUS_WORKSPACE_TOO_SMALL);
    check("misaligned workspace",
          tb_engine_init(&engine, model, len, 8, (uint8_t *)workspace + 2, sizeof workspace - 8),
          TB_STATUS_MISALIGNED);
}

static void prediction_checks(const uint8_t *model, size_t len, const uint8_t *image) {
    tb_engine engine;
    tb_rng rng;
    tb_result result;
    tb_mode mc = {TB_MODE_MONTE_CARLO, 8};
    check("init", tb_engine_init(&engine, model, len, 8, workspace, sizeof workspace), TB_STATUS_OK);
    check("seed", tb_rng_seed(&rng, 7), TB_STATUS_OK);
    check("NULL rng (seed)", tb_rng_seed(NULL, 7), TB_STATUS_NULL_POINTER);
    check("NULL result (init)", tb_result_init(NULL), TB_STATUS_NULL_POINTER);

    /* A result of another version is refused and left alone. */
    memset(&result, 0xA5, sizeof result);
    result.version = TB_RESULT_VERSION + 1;
    tb_result before = result;
    check("result of another version", tb_predict_u8(&engine, image, IMAGE_LEN, mc, &rng, &result),
          TB_STATUS_RESULT_VERSION);
    check_true("refused result untouched", memcmp(&before, &result, sizeof result) == 0);
    tb_result_init(&result);
    result.size = sizeof result - 4;
    check("result of another size", tb_predict_u8(&engine, image, IMAGE_LEN, mc, &rng, &result),
          TB_STATUS_RESULT_VERSION);
    tb_result_init(&result);

    check("NULL engine", tb_predict_u8(NULL, image, IMAGE_LEN, mc, &rng, &result), TB_STATUS_NULL_POINTER);
    check("NULL input", tb_predict_u8(&engine, NULL, IMAGE_LEN, mc, &rng, &result), TB_STATUS_NULL_POINTER);
    check("NULL rng", tb_predict_u8(&engine, image, IMAGE_LEN, mc, NULL, &result), TB_STATUS_NULL_POINTER);
    check("NULL result", tb_predict_u8(&engine, image, IMAGE_LEN, mc, &rng, NULL), TB_STATUS_NULL_POINTER);
    check("short input", tb_predict_u8(&engine, image, 100, mc, &rng, &result), TB_STATUS_INPUT_LENGTH);
    check("input length past the address space", tb_predict_u8(&engine, image, SIZE_MAX, mc, &rng, &result),
          TB_STATUS_LENGTH_OVERFLOW);
    check("unknown mode", tb_predict_u8(&engine, image, IMAGE_LEN, (tb_mode){9, 8}, &rng, &result),
          TB_STATUS_BAD_ARGUMENT);
    check("zero samples", tb_predict_u8(&engine, image, IMAGE_LEN, (tb_mode){TB_MODE_MONTE_CARLO, 0}, &rng, &result),
          TB_STATUS_ZERO_SAMPLES);
    check("65536 samples",
          tb_predict_u8(&engine, image, IMAGE_LEN, (tb_mode){TB_MODE_MONTE_CARLO, 65536}, &rng, &result),
          TB_STATUS_BAD_ARGUMENT);

    static float pixels[IMAGE_LEN + 1];
    for (unsigned i = 0; i < IMAGE_LEN; i++) {
        pixels[i] = image[i] / 255.0f;
    }
    pixels[17] = NAN;
    check("NaN input", tb_predict_f32(&engine, pixels, IMAGE_LEN, mc, &rng, &result), TB_STATUS_NON_FINITE_INPUT);
    check("misaligned f32 input",
          tb_predict_f32(&engine, (const float *)((const uint8_t *)pixels + 1), IMAGE_LEN, mc, &rng, &result),
          TB_STATUS_MISALIGNED);

    tb_halting all = {TB_HALTING_ALL, 0, 0, 0.0f, NULL, 0};
    check("early exit of a plain model",
          tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, &all, &rng, &result), TB_STATUS_NOT_EARLY_EXIT);
    check("NULL halting", tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, NULL, &rng, &result),
          TB_STATUS_NULL_POINTER);

    /* An engine that tb_engine_init did not set up, or that was moved since. */
    tb_engine zeroed;
    memset(&zeroed, 0, sizeof zeroed);
    check("engine not set up", tb_predict_u8(&zeroed, image, IMAGE_LEN, mc, &rng, &result),
          TB_STATUS_NOT_INITIALIZED);
    static tb_engine moved;
    memcpy(&moved, &engine, sizeof engine);
    check("moved engine", tb_predict_u8(&moved, image, IMAGE_LEN, mc, &rng, &result), TB_STATUS_NOT_INITIALIZED);
    tb_engine_info info;
    check("info of a moved engine", tb_engine_get_info(&moved, &info), TB_STATUS_NOT_INITIALIZED);
    check("NULL info", tb_engine_get_info(&engine, NULL), TB_STATUS_NULL_POINTER);

    /* After all that, the engine still answers. */
    check("prediction", tb_predict_u8(&engine, image, IMAGE_LEN, mc, &rng, &result), TB_STATUS_OK);
    check_true("a class and probabilities", result.class_count == 10 && result.predicted_class < 10 &&
                                                result.samples == 8 && result.fixed_point == 0);
    float sum = 0.0f;
    for (unsigned k = 0; k < result.class_count; k++) {
        sum += result.probabilities[k];
    }
    check_true("probabilities sum to 1", fabsf(sum - 1.0f) < 1e-5f);
    check("info", tb_engine_get_info(&engine, &info), TB_STATUS_OK);
    check_true("info", info.precision == 0 && info.input_len == IMAGE_LEN && info.class_count == 10 &&
                           info.chunk == 8 && info.exit_count == 0 && info.model_bytes == len);
}

static void fixed_point_checks(const uint8_t *model, size_t len, const uint8_t *image) {
    tb_engine engine;
    tb_rng rng;
    tb_result result;
    size_t bytes = 0;
    tb_mode mc = {TB_MODE_MONTE_CARLO, 8};
    tb_mode moments = {TB_MODE_MOMENTS, 0};
    tb_result_init(&result);
    tb_rng_seed(&rng, 7);
    check("moments of a fixed-point model (size)", tb_workspace_size(model, len, 8, moments, &bytes),
          TB_STATUS_UNSUPPORTED_MODE);
    check("init q8", tb_engine_init(&engine, model, len, 8, workspace_fixed, sizeof workspace_fixed), TB_STATUS_OK);
    check("u64 workspace at a 4-byte offset",
          tb_engine_init(&engine, model, len, 8, (uint8_t *)workspace_fixed + 4, sizeof workspace_fixed - 8),
          TB_STATUS_MISALIGNED);
    check("init q8 again", tb_engine_init(&engine, model, len, 8, workspace_fixed, sizeof workspace_fixed),
          TB_STATUS_OK);
    static float pixels[IMAGE_LEN];
    check("f32 input to a fixed-point model", tb_predict_f32(&engine, pixels, IMAGE_LEN, mc, &rng, &result),
          TB_STATUS_INPUT_TYPE);
    check("moments of a fixed-point model", tb_predict_u8(&engine, image, IMAGE_LEN, moments, &rng, &result),
          TB_STATUS_UNSUPPORTED_MODE);
    check("q8 prediction", tb_predict_u8(&engine, image, IMAGE_LEN, mc, &rng, &result), TB_STATUS_OK);
    uint32_t sum = 0;
    for (unsigned k = 0; k < result.class_count; k++) {
        sum += result.probabilities_uq16[k];
        check_true("float fields are the Q16 integers / 65536",
                   result.probabilities[k] == (float)result.probabilities_uq16[k] / 65536.0f);
    }
    check_true("fixed-point result", result.fixed_point == 1 && sum > 65536 - 64 && sum < 65536 + 64);
}

static void early_exit_checks(const uint8_t *model, size_t len, const uint8_t *image) {
    tb_engine engine;
    tb_rng rng;
    tb_result result;
    tb_mode mc = {TB_MODE_MONTE_CARLO, 4};
    tb_result_init(&result);
    tb_rng_seed(&rng, 7);
    check("init early exit",
          tb_engine_init(&engine, model, len, 8, workspace_early_exit, sizeof workspace_early_exit), TB_STATUS_OK);
    tb_halting robust_nan = {TB_HALTING_ROBUST, 0, 0, NAN, NULL, 0};
    check("robust halting with a NaN bound",
          tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, &robust_nan, &rng, &result), TB_STATUS_BAD_PRIOR);
    tb_halting unknown = {42, 0, 0, 0.0f, NULL, 0};
    check("unknown halting", tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, &unknown, &rng, &result),
          TB_STATUS_BAD_ARGUMENT);
    tb_halting measure = {TB_HALTING_THRESHOLD, 0, 7, 0.1f, NULL, 0};
    check("unknown measure", tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, &measure, &rng, &result),
          TB_STATUS_BAD_ARGUMENT);
    tb_halting depth0 = {TB_HALTING_DEPTH, 0, 0, 0.0f, NULL, 0};
    check("depth 0", tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, &depth0, &rng, &result),
          TB_STATUS_BAD_PRIOR);
    const float bad_prior[2] = {0.5f, 0.5f};
    tb_halting joint_bad = {TB_HALTING_JOINT_MODE, 0, 0, 0.0f, bad_prior, 2};
    check("prior of the wrong length",
          tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, &joint_bad, &rng, &result), TB_STATUS_BAD_PRIOR);
    tb_halting joint_null = {TB_HALTING_JOINT_MODE, 0, 0, 0.0f, (const float *)(uintptr_t)2, 3};
    check("misaligned prior",
          tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, &joint_null, &rng, &result), TB_STATUS_MISALIGNED);
    tb_halting depth1 = {TB_HALTING_DEPTH, 1, 0, 0.0f, NULL, 0};
    check("depth 1", tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, &depth1, &rng, &result), TB_STATUS_OK);
    check_true("depth 1 answers at exit 0", result.exit == 0 && result.depth == 1 && result.macs > 0);
    uint32_t one_block = result.macs;
    tb_halting all = {TB_HALTING_ALL, 0, 0, 0.0f, NULL, 0};
    check("all", tb_predict_early_exit_u8(&engine, image, IMAGE_LEN, mc, &all, &rng, &result), TB_STATUS_OK);
    check_true("every block costs more than one", result.depth > 1 && result.macs > one_block);
}

int tb_boundary_checks(const uint8_t *f32_model, size_t f32_len, const uint8_t *q8_model, size_t q8_len,
                       const uint8_t *early_exit_model, size_t early_exit_len, const uint8_t *image, char *report,
                       size_t report_len) {
    failures = 0;
    report_at = report;
    report_left = report_len;
    report[0] = '\0';
    check_true("ABI version", tb_abi_version() == TB_ABI_VERSION);
    check_true("the header's tb_engine is the library's", tb_engine_size() == sizeof(tb_engine));
    if (tb_engine_size() != sizeof(tb_engine)) {
        return failures; /* a stale header: running on would write past the C structs */
    }
    check_true("unknown status named", strncmp(tb_status_name(12345), "TB_STATUS_UNKNOWN", 17) == 0);
    check_true("status names", strncmp(tb_status_name(TB_STATUS_MODEL_CRC_MISMATCH),
                                       "TB_STATUS_MODEL_CRC_MISMATCH:", 29) == 0);
    if (f32_len > sizeof copy - 8) {
        check_true("test model fits the scratch copy", 0);
        return failures;
    }
    model_checks(f32_model, f32_len);
    prediction_checks(f32_model, f32_len, image);
    fixed_point_checks(q8_model, q8_len, image);
    early_exit_checks(early_exit_model, early_exit_len, image);
    return failures;
}
