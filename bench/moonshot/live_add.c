/* Moonshot prototype (bench/moonshot, not part of iocmng): add one record to a
 * running IOC (after iocInit), repeating for that one record the steps that
 * iocBuild() does for all of them (epics-base modules/database/src/ioc/misc/
 * iocInit.c: prepareLinks, dbLockInitRecords, doInitRecord0, doResolveLinks,
 * doInitRecord1, asDbAddRecords, scanInit, initialProcess).  Those steps are
 * static functions of iocInit.c / dbLock.c, so they are re-implemented here
 * against the symbols libdbCore.so exports on Linux.
 *
 * Built by records_after_iocinit.py with gcc against epicscorelibs' headers.
 *
 * Two deliberate deviations from iocBuild:
 *  - the record is created under a temporary name nobody searches for and is
 *    published under its real name (dbPvdDelete + dbPvdAdd) only once it is
 *    fully initialised: dbCreateRecord() makes a name visible to CA/PVA search
 *    (dbChannelTest -> dbPvdFind) at once, before the record has a lock set,
 *    and a client reaching it then would dereference prec->lset == NULL;
 *  - links to other records (DB links) are NOT set at init: iocBuild sets
 *    them through dbDbInitLink -> dbLockSetMerge(NULL, ...), the unlocked
 *    init-time merge, which is only safe while nothing else runs.  The
 *    caller sets them after publication through dbPutField on the link field
 *    (dbAccess.c dbPutFieldLink), the run-time path that takes both lock sets
 *    with dbScanLockMany and merges with a locker.
 */
#define USE_TYPED_RSET
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>

#include <epicsMutex.h>
#include <ellLib.h>
#include <dbDefs.h>
#include <dbBase.h>
#include <dbAccess.h>
#include <dbStaticLib.h>
#include <dbStaticPvt.h>
#include <dbCommon.h>
#include <recSup.h>
#include <devSup.h>
#include <dbLock.h>
#include <dbScan.h>
#include <dbLink.h>
#include <link.h>
#include <alarm.h>
#include <asLib.h>
#include <menuPini.h>
#include <iocInit.h>

/* error codes returned to Python */
#define LA_NOT_RUNNING  -10
#define LA_NO_TYPE      -11
#define LA_EXISTS       -12
#define LA_CREATE       -13
#define LA_FIELD        -14
#define LA_NO_RSET      -15
#define LA_PUBLISH      -16

static char la_errbuf[256];

/* Negative control only: la_add with an empty tmpname creates the record under
 * its real name (what dbCreateRecord/dbLoadRecords would do) and waits this
 * long before initialising it, to widen the window in which a client can
 * reach a record that has no lock set, record support or access security. */
unsigned la_naive_delay_us = 0;

const char *la_error(void) { return la_errbuf; }

/* Give one record its lockRecord and own lock set.  dbLock.c's
 * createLockRecord/makeSet are static and dbLockInitRecords(pdbbase) walks
 * every record (assert(!prec->lset) would fire on the old ones), so hand
 * dbLockInitRecords a private dbBase that holds only this record. */
static void la_lock_init(dbRecordNode *node)
{
    dbBase fake;
    dbRecordType ftype;
    dbRecordNode fnode;

    memset(&fake, 0, sizeof(fake));
    memset(&ftype, 0, sizeof(ftype));
    memset(&fnode, 0, sizeof(fnode));
    ellInit(&fake.recordTypeList);
    ellInit(&ftype.recList);
    fnode.precord = node->precord;
    fnode.recordname = node->recordname;
    fnode.flags = 0;
    ellAdd(&ftype.recList, &fnode.node);
    ellAdd(&fake.recordTypeList, &ftype.node);
    dbLockInitRecords(&fake);
}

/* fields[i] / values[i]: put with dbPutString before init, in order (put DTYP
 * first); a name "info:X" sets info tag X instead.  Link fields naming other records must not be passed here (see the
 * header); the caller sets them with dbPutField after publication.
 * Returns 0 and the dbCommon* in *pprec, or a negative LA_* code. */
int la_add(const char *rtype, const char *tmpname, const char *name,
           int nfields, const char **fields, const char **values,
           void **pprec)
{
    DBENTRY entry;
    dbRecordType *rtyp;
    dbRecordNode *node;
    dbCommon *prec;
    rset *prset;
    devSup *pdevSup;
    long status;
    int i, j;

    la_errbuf[0] = '\0';
    if (getIocState() != iocRunning) {
        strcpy(la_errbuf, "IOC not running");
        return LA_NOT_RUNNING;
    }
    dbInitEntry(pdbbase, &entry);
    if (dbFindRecordType(&entry, rtype)) {
        snprintf(la_errbuf, sizeof la_errbuf, "no record type %s", rtype);
        dbFinishEntry(&entry);
        return LA_NO_TYPE;
    }
    int naive = !tmpname[0];
    if (naive)
        tmpname = name;
    if (!dbFindRecord(&entry, name) || !dbFindRecord(&entry, tmpname)) {
        snprintf(la_errbuf, sizeof la_errbuf, "record %s exists", name);
        dbFinishEntry(&entry);
        return LA_EXISTS;
    }
    dbFindRecordType(&entry, rtype);
    /* dbStaticLib.c dbCreateRecord: dbAllocRecord, ellAdd to the type's
     * recList (no lock: only init-time walkers such as dbl read it), then
     * dbPvdAdd (bucket mutex): visible to name lookup from here on. */
    status = dbCreateRecord(&entry, tmpname);
    if (status) {
        snprintf(la_errbuf, sizeof la_errbuf, "dbCreateRecord %s: %ld", tmpname, status);
        dbFinishEntry(&entry);
        return LA_CREATE;
    }
    for (i = 0; i < nfields; i++) {
        if (strncmp(fields[i], "info:", 5) == 0) {  /* info tag, e.g. info:Q:form */
            if (dbPutInfo(&entry, fields[i] + 5, values[i])) {
                snprintf(la_errbuf, sizeof la_errbuf, "info %s refused", fields[i] + 5);
                dbFinishEntry(&entry);
                return LA_FIELD;
            }
            continue;
        }
        if (dbFindField(&entry, fields[i]) || dbPutString(&entry, values[i])) {
            snprintf(la_errbuf, sizeof la_errbuf, "field %s=%s refused", fields[i], values[i]);
            /* the record stays half-made under its temporary name (no delete
             * after iocInit is attempted here) */
            dbFinishEntry(&entry);
            return LA_FIELD;
        }
    }
    if (naive && la_naive_delay_us)
        usleep(la_naive_delay_us);
    node = entry.precnode;
    rtyp = entry.precordType;
    prec = (dbCommon *)node->precord;
    prset = rtyp->prset;
    if (!prset) {
        strcpy(la_errbuf, "record type has no record support");
        dbFinishEntry(&entry);
        return LA_NO_RSET;
    }

    /* iocBuild_2: prepareLinks */
    dbInitRecordLinks(rtyp, prec);
    /* iocBuild_2: dbLockInitRecords (this record only) */
    la_lock_init(node);

    /* initDatabase: doInitRecord0 */
    prec->rset = prset;
    prec->mlok = epicsMutexMustCreate();
    ellInit(&prec->mlis);
    prec->pact = FALSE;
    if (prec->udf && prec->stat == UDF_ALARM)
        prec->sevr = prec->udfs;
    pdevSup = dbDTYPtoDevSup(rtyp, prec->dtyp);
    prec->dset = pdevSup ? pdevSup->pdset : NULL;

    /* record processing may not start before init_record has run: hold the
     * record's own lock set through init (nobody else can reach it yet) */
    dbScanLock(prec);
    if (prset->init_record)
        prset->init_record(prec, 0);

    /* initDatabase: doResolveLinks (DB links were left out by the caller) */
    for (j = 0; j < rtyp->no_links; j++) {
        dbFldDes *pdbFldDes = rtyp->papFldDes[rtyp->link_ind[j]];
        DBLINK *plink = (DBLINK *)((char *)prec + pdbFldDes->offset);

        if (ellCount(&rtyp->devList) > 0 && pdbFldDes->isDevLink && pdevSup) {
            struct dsxt *pdsxt = pdevSup->pdsxt;
            if (pdsxt && pdsxt->add_record)
                pdsxt->add_record(prec);
        }
        dbInitLink(plink, pdbFldDes->field_type);
    }

    /* initDatabase: doInitRecord1 */
    if (prset->init_record)
        prset->init_record(prec, 1);
    dbScanUnlock(prec);

    /* asInit: asDbAddRecords for this record */
    if (asActive && !prec->asp) {
        if (asAddMember(&prec->asp, prec->asg) == 0)
            asPutMemberPvt(prec->asp, prec);
    }

    /* publish under the real name: the temporary name leaves the PV
     * directory, the real one enters it (bucket mutexes only) */
    if (!naive)
        dbPvdDelete(pdbbase, node);
    strncpy(prec->name, name, sizeof(prec->name) - 1);
    prec->name[sizeof(prec->name) - 1] = '\0';
    if (!naive && !dbPvdAdd(pdbbase, rtyp, node)) {
        snprintf(la_errbuf, sizeof la_errbuf, "dbPvdAdd %s failed (name taken meanwhile?)", name);
        dbFinishEntry(&entry);
        return LA_PUBLISH;
    }

    /* scanInit: scan lists (scanAdd takes the list's mutex; the same call
     * dbPut makes when a client changes SCAN at run time) */
    scanAdd(prec);

    dbFinishEntry(&entry);
    *pprec = prec;
    return 0;
}

/* initialProcess for one record (PINI=YES), after its links are set */
void la_pini(void *vprec)
{
    dbCommon *prec = (dbCommon *)vprec;
    if (prec->pini == menuPiniYES) {
        dbScanLock(prec);
        dbProcess(prec);
        dbScanUnlock(prec);
    }
}

unsigned long la_lock_id(void *vprec) { return dbLockGetLockId((dbCommon *)vprec); }
unsigned long la_lock_sets(void) { return dbLockCountSets(); }
