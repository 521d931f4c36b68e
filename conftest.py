# Lets tests import the top-level scripts (ddpm, unet, ...) and tests.analytic.
