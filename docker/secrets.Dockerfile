# The one-shot `secrets` service of docker-compose.yml (docker/secrets.sh).
FROM busybox:1.36.1
# Owned by the secrets user (10002) and readable by its group only. Docker gives a new,
# empty named volume the owner and mode of the directory it is first mounted over, so the
# unprivileged script can write into the volume.
RUN mkdir -p /run/cv-secrets && chown 10002:10002 /run/cv-secrets \
    && chmod 0750 /run/cv-secrets
COPY docker/secrets.sh /usr/local/bin/cv-secrets.sh
USER 10002:10002
CMD ["sh", "/usr/local/bin/cv-secrets.sh"]
