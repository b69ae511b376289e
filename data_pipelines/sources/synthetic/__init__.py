"""Procedural face renderer: the embedded default face source ``synthetic``.

Works on any machine with no download. Every record is a cartoon-like but varied face drawn
with OpenCV (anti-aliased polygons, soft directional shading) together with its exact
68-point iBUG/dlib landmarks, taken from the very point arrays that are drawn.

Determinism and identities
--------------------------
* Identity traits come from ``SeedSequence([seed, stream, identity])`` with three separate
  streams: *shared* (skin tone, hair colour), *upper face* (face width, eyes, brows, hair
  style, glasses) and *lower face* (jaw, chin, nose, mouth, lip colour, beard, mole). The
  lower face is thus independent of the visible upper face except for the shared skin tone
  and the (usually hair-coloured) beard, so a mask over nose/mouth/chin hides real
  information.
* Per-image variation comes from ``SeedSequence([seed, 3, index])``: pose (roll, scale,
  shift, small yaw), lighting, expression (mouth open, smile, brow raise, gaze, eye
  opening), glasses on/off, clothes and background clutter.
* Same ``(seed, index, resolution)`` -> byte-identical image and landmarks.

Geometry
--------
Everything is built in a canonical face frame (x right, y down; cheek half-width ~1, eyes at
y ~ -0.2, chin at y ~ 1.1). A small yaw moves each point by ``z * sin(yaw)`` (``z`` = depth
on a rounded head), which squeezes the far side of the face. One similarity transform
(roll, scale, shift) then maps every point to pixels, so drawing and landmarks agree
exactly. Landmark pixel convention: pixel ``(row i, column j)`` has its centre at
``x = j, y = i`` (OpenCV / dlib).

Modules (data flows top to bottom)
----------------------------------
- :mod:`.colours`: RGB colour helpers.
- :mod:`.traits`: random streams, identity traits, per-image view parameters.
- :mod:`.geometry`: the canonical point sets of a face (``_Bank``) and its 68 landmarks.
- :mod:`.drawing`: fixed-point drawing, alpha-blended fills, the eye, the background.
- :mod:`.shading`: the head's lighting.
- :mod:`.render`: :func:`render_face`, one face from all of the above.
- :mod:`.source`: :class:`SyntheticFaces`, the record source.

Names with a leading underscore are internal to this package (shared between its modules).
"""
from data_pipelines.sources.synthetic.render import render_face
from data_pipelines.sources.synthetic.source import MAX_RESOLUTION, MIN_RESOLUTION, SyntheticFaces
from data_pipelines.sources.synthetic.traits import identity_traits

__all__ = ["MAX_RESOLUTION", "MIN_RESOLUTION", "SyntheticFaces", "identity_traits",
           "render_face"]
