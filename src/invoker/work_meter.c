/* The work meter: a time integral of a target's work between the autoscaler's reads (see
 * invoker.h). Pure: the caller gives the clock. */
#include "invoker/invoker.h"

static void work_meter__advance(struct work_meter *wm, uint64_t now_us)
{
    if (wm->changed_us && now_us > wm->changed_us)
        wm->integral += wm->level * (double)(now_us - wm->changed_us);
    if (!wm->changed_us || now_us > wm->changed_us)
        wm->changed_us = now_us;
}

void work_meter_set(struct work_meter *wm, double level, uint64_t now_us)
{
    if (!wm->read_us)
        wm->read_us = now_us;
    work_meter__advance(wm, now_us);
    wm->level = level > 0 ? level : 0;
}

double work_meter_take_average(struct work_meter *wm, uint64_t now_us)
{
    work_meter__advance(wm, now_us);
    uint64_t span = wm->read_us && now_us > wm->read_us ? now_us - wm->read_us : 0;
    double average = span ? wm->integral / (double)span : wm->level;
    wm->integral = 0;
    wm->read_us = now_us;
    return average;
}
