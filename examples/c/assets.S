/* The embedded model and the ten test images (10 labels, then 10 images of 28x28 bytes),
 * read in place from flash. MODEL_FILE and IMAGES_FILE are given by the Makefile. */
    .section .rodata.tinybayes_model, "a"
    .balign 8
    .global model_bytes
model_bytes:
    .incbin MODEL_FILE
model_end:
    .balign 4
    .global model_len
model_len:
    .word model_end - model_bytes

    .section .rodata.tinybayes_images, "a"
    .global mnist_first10
mnist_first10:
    .incbin IMAGES_FILE
