# The jobnest image: controller, SDK and CLI, for runner jobs in containers and for running the
# controller itself in a container. `make images` builds it (scripts/images.sh) on a Debian base
# made locally with debootstrap, from wheels built on the host: the build needs no network.
FROM jobnest/debian:bookworm
COPY build/wheels /tmp/wheels
RUN python3 -m venv /opt/jobnest \
 && /opt/jobnest/bin/pip install --no-index --find-links /tmp/wheels 'jobnest[postgres,docker,kubernetes]' \
 && rm -rf /tmp/wheels /root/.cache
ENV PATH=/opt/jobnest/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EXPOSE 7070
CMD ["jobnest", "controller", "--listen", "0.0.0.0:7070", "--home", "/var/lib/jobnest"]
