/* What unit tests with a PostgreSQL group need: a throwaway server of the group's own
 * (scripts/pg-throwaway.sh, run from the source folder), started and stopped as the group's
 * setup and teardown, a new database on it per test, and SQL run on it directly. Include after
 * cmocka.h. */
#ifndef SKIFF_TESTS_PG_THROWAWAY_H
#define SKIFF_TESTS_PG_THROWAWAY_H

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/util.h"

/* The server's socket folder while the PostgreSQL group runs; NULL otherwise. */
static char *pg_throwaway_dir;
static int pg_throwaway_databases;

static inline char *pg_throwaway_url(const char *db)
{
    return xasprintf("postgres:///%s?host=%s&user=postgres", db, pg_throwaway_dir);
}

/* Runs sql on the database at url; a failure fails the test. */
static inline void pg_throwaway_sql(const char *url, const char *sql)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect %s: %s", url, PQerrorMessage(c));
    PGresult *res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(res);
    PQfinish(c);
}

/* A new, empty database on the server ("tN"): its URL, which the caller frees. */
static inline char *pg_throwaway_database(void)
{
    char name[32];
    snprintf(name, sizeof name, "t%d", ++pg_throwaway_databases);
    char *admin = pg_throwaway_url("postgres");
    char *sql = xasprintf("CREATE DATABASE %s", name);
    pg_throwaway_sql(admin, sql);
    free(sql);
    free(admin);
    return pg_throwaway_url(name);
}

/* The group's teardown: stops the server and forgets it. */
static inline int pg_throwaway_stop(void **state)
{
    (void)state;
    char *cmd = xasprintf("scripts/pg-throwaway.sh stop %s", pg_throwaway_dir);
    int rc = system(cmd);
    free(cmd);
    free(pg_throwaway_dir);
    pg_throwaway_dir = NULL;
    return rc == 0 ? 0 : -1;
}

/* The group's setup: a server in a new folder; one that cannot start fails the group. */
static inline int pg_throwaway_start(void **state)
{
    char dir[] = "/tmp/skiff-pg-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "cannot make a folder for PostgreSQL\n");
        return -1;
    }
    pg_throwaway_dir = xstrdup(dir);
    char *cmd = xasprintf("scripts/pg-throwaway.sh start %s >/dev/null", pg_throwaway_dir);
    int rc = system(cmd);
    free(cmd);
    if (rc != 0) {
        pg_throwaway_stop(state);
        fprintf(stderr, "PostgreSQL did not start (scripts/pg-throwaway.sh, run from the "
                        "source folder): the PostgreSQL group fails\n");
        return -1;
    }
    return 0;
}

#endif
