"""A local web page for unmasking one photo at a time (Gradio):

    python -m unmask_jax.demo                                   # the starter weights
    python -m unmask_jax.demo --weights=DIR [--weights=DIR2 ...] [--workdir=RUN ...
        --config=CFG] [--host=127.0.0.1] [--port=7860]

Modules: ``models`` (loading weights folders and runs as ``--mode=predict`` does), ``app``
(the page over predict's ``Predictor.unmask``), ``__main__`` (the flags). Needs the
``demo`` extra: ``pip install -e ".[demo]"``. Nothing else in the project imports this
package.
"""
