"""A local web tool to annotate a folder of images with four clicks per object.

`python -m dlset_jax.app --workdir WORKDIR --images FOLDER` (`__main__`). The layers:
`folder` (which files may be read and written, reading, atomic saves), `brush` (edits
painted by hand after the model), `server` (the HTTP API over a `Segmenter`), `static/`
(the page: plain HTML and JavaScript, nothing fetched from elsewhere).
"""
